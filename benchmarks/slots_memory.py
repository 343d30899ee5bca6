"""Resident memory of one engine by slots and context per slot: the operator's table.

    .venv/bin/python benchmarks/slots_memory.py [--slots 1 4 8 16] [--n-ctx 2048 8192]

Each row loads gemma-3-270m in a fresh process with --parallel SLOTS and --n-ctx N, runs one
short job in every slot at once (so every buffer llama.cpp allocates lazily is there), and
reads the process's resident set (VmRSS) and the KV cache the node plans
(inferad.context: slots x n_ctx x KV bytes per token, an upper bound for gemma 3's
sliding-window layers).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, threading
sys.path.insert(0, {root!r})
from inferad.engine import Engine
from inferad.models import resolve
from p2p import wire
engine = Engine(resolve("gemma-3-270m"), n_ctx={n_ctx}, n_slots={slots})
prompt = engine.tokenize("Hello")
params = wire.SamplingParams(max_tokens=4)
threads = [threading.Thread(target=engine.generate, args=(prompt, params)) for _ in range({slots})]
[t.start() for t in threads]
[t.join() for t in threads]
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
print(json.dumps({{"rss_kib": rss, "kv_bytes": engine.context.kv_bytes}}))
engine.close()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--n-ctx", type=int, nargs="+", default=[2048, 8192])
    args = parser.parse_args()
    print(f"{'slots':>5} {'n_ctx/slot':>10} {'planned KV MiB':>15} {'RSS MiB':>8}")
    for n_ctx in args.n_ctx:
        for slots in args.slots:
            out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), n_ctx=n_ctx, slots=slots)],
                                 capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(f"{slots:>5} {n_ctx:>10} {row['kv_bytes'] / 2**20:>15.0f} {row['rss_kib'] / 1024:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
