"""How fast this node decodes each model alone: measured, cached, and kept up by the jobs it runs.

The scheduler ranks workers by advertised tokens/s, so the figure must be
measured, not declared: a short greedy run the first time a model starts on
this hardware (32 tokens: under a second on a CPU), cached (keyed by model
digest, engine build and hardware) so restarts do not pay for it again.  A
probe taken while something else loads the machine reads low (1.1 tokens/s was
seen for gemma-3-270m during a test run, against 45 alone), so every job the
node then runs alone is a probe too: the figure moves half way toward each such
job's stream speed (:func:`follow`), both ways, so neither a bad moment nor a
quiet one sticks: the figure is what the node gave lately, not the best it ever
gave (a best-ever figure of 73 against 44 streamed under a busier machine made
gateways count an honest node's adverts as overclaims).  The cache is rewritten
when the figure has moved 10 %.  What a node delivers under load is measured apart
(the advert's ``load.tokens_per_s``), and gateways hold every claim to the
speed they observe (``scheduler.speeds``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from inferad.files import write_json
from inferad.models import cache_dir
from p2p import wire

log = logging.getLogger("inferad.speed")
PROBE_PROMPT = "Describe the water cycle in a few sentences."
PROBE_TOKENS = 32
SMOOTHING = 0.5  # weight of the newest job alone: from a probe 40x too low, 5 jobs get within 10 %


def cache_key(engine, hardware: wire.Hardware, *, threads: int = 0) -> str:
    """What a speed figure holds for: the model's digest, the engine build, the hardware, the threads."""
    return "|".join([engine.ref.sha256, engine.info.version, engine.info.backend, hardware.cpu,
                     str(hardware.cores), ",".join(g.name for g in hardware.gpus), str(threads)])


def tokens_per_second(engine, key: str) -> float:
    """The cached figure for ``key``, or a probe of ``engine`` (then cached); blocking."""
    if engine.kind == "sim":
        return engine.tokens_per_s
    cached = _load(_path()).get(key)
    if _is_speed(cached):
        return float(cached)
    generation = engine.generate(engine.tokenize(PROBE_PROMPT), wire.SamplingParams(max_tokens=PROBE_TOKENS))
    speed = round(len(generation.tokens) / max((generation.prompt_ms + generation.decode_ms) / 1000, 1e-3), 1)
    log.info("measured %s: %.1f tokens/s", engine.ref.name, speed)
    remember(key, speed)
    return speed


def follow(advertised: float, observed: float, tokens: int) -> float:
    """The single-stream figure after a job that ran alone streamed ``tokens`` new tokens at
    ``observed`` tokens/s (prompt included): ``SMOOTHING`` of the way from ``advertised`` toward
    ``observed``, rounded to 0.1; unchanged for a job shorter than ``PROBE_TOKENS``."""
    if tokens < PROBE_TOKENS or observed <= 0:
        return advertised
    return round((1 - SMOOTHING) * advertised + SMOOTHING * observed, 1)


def moved(figure: float, cached: float) -> bool:
    """Whether ``figure`` is 10 % or more away from the ``cached`` one (worth rewriting the cache)."""
    return abs(figure - cached) >= 0.1 * cached


def remember(key: str, speed: float) -> None:
    """Cache ``speed`` for ``key`` (atomically; blocking file I/O)."""
    cache = _path()
    known = _load(cache)
    known[key] = round(speed, 1)
    write_json(cache, known, indent=1)


def _is_speed(value: object) -> bool:
    """A cached figure is used only if it is a positive number: the cache is a file anyone may edit."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6


def _path() -> Path:
    return cache_dir() / "speed.json"


def _load(path: Path) -> dict:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}
