"""Model transfer over the mesh: MB/s from one provider and from three, and start-to-serving time.

    .venv/bin/python benchmarks/model_transfer.py [--providers 1,3]

Real node processes on 127.0.0.1.  Provider nodes serve gemma-3-270m (~253 MB); a gateway node
with an empty cache of its own (``INFERAD_CACHE``) runs ``inferad models pull sha256:…``, timed
from the command to the file checked and in place; ``cp`` of the same file, in the same run, is
the baseline (ratio = cp time / pull time).  Then a fresh node is started with
``--model sha256:…`` on an empty cache next to one provider: the time from ``inferad start`` to
the node serving the model (its node.json lists it), and to a first job answered through it.
Goals (issue 15): >= 50 MB/s from one provider, serving within 15 s of start.
Run it alone: two cores shared with anything else measure nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferad.models import CATALOG, resolve  # noqa: E402
from tests.conftest import NodeProcess, run_cli  # noqa: E402
from tests.test_mesh_integration import wait_for  # noqa: E402

SHA = CATALOG["gemma-3-270m"].sha256
NODE_ARGS = ("--n-ctx", "256", "--max-tokens", "8")


def providers_seen(node: NodeProcess, env: dict) -> int:
    proc = run_cli("models", "--json", home=node.home, env=env)
    rows = json.loads(proc.stdout) if proc.returncode == 0 else []
    return sum(len(m["providers"]) for m in rows if m["sha256"] == SHA)


def pull_from(root: Path, count: int) -> float:
    """Seconds to pull the model from ``count`` providers into an empty cache."""
    nodes = [NodeProcess(root / f"p{count}-provider0", *NODE_ARGS)]
    nodes += [NodeProcess(root / f"p{count}-provider{i}", *NODE_ARGS, "--bootstrap", nodes[0].addr)
              for i in range(1, count)]
    env = {"INFERAD_CACHE": str(root / f"cache-{count}")}
    try:
        gateway = NodeProcess(root / f"p{count}-gateway", "--no-model", "--bootstrap", nodes[0].addr, env=env)
        nodes.append(gateway)
        wait_for(lambda: providers_seen(gateway, env) >= count, 60, f"{count} provider adverts")
        started = time.perf_counter()
        run_cli("models", "pull", f"sha256:{SHA}", home=gateway.home, env=env, timeout=600, check=True)
        return time.perf_counter() - started
    finally:
        for node in nodes:
            node.stop()


def start_to_serving(root: Path) -> tuple[float, float]:
    """Seconds from ``inferad start --model sha256:…`` (empty cache) to serving, and to a first job."""
    provider = NodeProcess(root / "s-provider", *NODE_ARGS)
    env = {"INFERAD_CACHE": str(root / "cache-start")}
    node = None
    try:
        started = time.perf_counter()
        node = NodeProcess(root / "s-node", "--bootstrap", provider.addr, "--model", f"sha256:{SHA}", *NODE_ARGS,
                           env=env)
        wait_for(lambda: SHA in {m["sha256"] for m in json.loads((node.home / "node.json").read_text())["models"]},
                 300, "the node to serve the fetched model")
        serving = time.perf_counter() - started
        run_cli("submit", "--node-home", str(node.home), "--max-tokens", "4", "Hello", home=root / "client",
                check=True, env=env)
        return serving, time.perf_counter() - started
    finally:
        provider.stop()
        if node is not None:
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--providers", default="1,3", help="provider counts to pull from")
    args = parser.parse_args()
    source = resolve("gemma-3-270m").path
    size = source.stat().st_size
    with tempfile.TemporaryDirectory(prefix="inferad-transfer-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        shutil.copyfile(source, root / "copy.gguf")
        subprocess.run(["sync"], check=True)
        cp_s = time.perf_counter() - started
        print(f"gemma-3-270m: {size / 1e6:.0f} MB; cp {cp_s:.2f} s = {size / 1e6 / cp_s:.0f} MB/s")
        for count in [int(c) for c in args.providers.split(",") if c]:
            seconds = pull_from(root, count)
            print(f"pull from {count} provider(s): {seconds:.2f} s = {size / 1e6 / seconds:.1f} MB/s, "
                  f"ratio to cp {cp_s / seconds:.3f}", flush=True)
        serving, first_job = start_to_serving(root)
        print(f"inferad start --model sha256:… on an empty cache: serving after {serving:.1f} s, "
              f"first job answered after {first_job:.1f} s")


if __name__ == "__main__":
    main()
