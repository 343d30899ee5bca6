"""How fast this node decodes each model, measured once per model and hardware.

The scheduler ranks workers by advertised tokens/s, so the figure must be
measured, not declared: a short greedy run at start, cached (keyed by model
digest, engine build and hardware) so restarts do not pay for it again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from inferad.models import cache_dir
from p2p import wire

log = logging.getLogger("inferad.speed")
PROBE_PROMPT = "Describe the water cycle in a few sentences."
PROBE_TOKENS = 32


def tokens_per_second(engine, hardware: wire.Hardware, *, threads: int = 0) -> float:
    if engine.kind == "sim":
        return engine.tokens_per_s
    key = "|".join([engine.ref.sha256, engine.info.version, engine.info.backend, hardware.cpu,
                    str(hardware.cores), ",".join(g.name for g in hardware.gpus), str(threads)])
    cache = _path()
    known = _load(cache)
    if key in known:
        return known[key]
    generation = engine.generate(engine.tokenize(PROBE_PROMPT), wire.SamplingParams(max_tokens=PROBE_TOKENS))
    speed = round(len(generation.tokens) / max((generation.prompt_ms + generation.decode_ms) / 1000, 1e-3), 1)
    log.info("measured %s: %.1f tokens/s", engine.ref.name, speed)
    known[key] = speed
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, cache)
    return speed


def _path() -> Path:
    return cache_dir() / "speed.json"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
