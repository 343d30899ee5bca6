"""What the OpenAI-compatible HTTP API costs, next to `inferad submit` and llama.cpp itself.

    .venv/bin/python benchmarks/api_overhead.py [--runs 7] [--tokens 64]

One node with the API on 127.0.0.1; runs alternate:
(a) the job as `inferad submit` (a process, as a user runs it) and
(b) the same job (same prompt, greedy, same max_tokens: the same tokens) through
    POST /v1/completions from a warm HTTP client,
and print both medians and b/a.  Then time to first token: streamed
/v1/chat/completions (SSE) against llama.cpp's own first-token time for the
same chat prompt, measured in this process (prompt evaluation + 1 token).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import PROMPT, start_node  # noqa: E402

CHAT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import httpx

    from inferad.engine import Engine
    from inferad.home import Home
    from inferad.models import resolve
    from p2p import wire

    print(f"gemma-3-270m, {args.tokens} greedy tokens, {args.runs} runs each, {args.threads} llama.cpp threads",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        node_home, client_home = Path(tmp) / "node", Path(tmp) / "client"
        Home(client_home).ensure()
        Home(node_home).ensure()
        key = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--home", str(node_home)], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        proc, info = start_node(node_home, 2048, args.threads, "--api-port", "0")
        try:
            http = httpx.Client(base_url=info["api"], headers={"Authorization": f"Bearer {key}"}, timeout=120)

            def submit() -> float:
                started = time.perf_counter()
                subprocess.run([str(ROOT / ".venv/bin/inferad"), "submit", "--home", str(client_home), "--node",
                                info["addrs"][0], PROMPT, "--max-tokens", str(args.tokens)], cwd=ROOT, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return time.perf_counter() - started

            def api() -> float:
                started = time.perf_counter()
                reply = http.post("/v1/completions", json={"model": "gemma-3-270m", "prompt": PROMPT,
                                                           "max_tokens": args.tokens, "temperature": 0})
                reply.raise_for_status()
                return time.perf_counter() - started

            def api_ttft() -> float:
                started = time.perf_counter()
                body = {"model": "gemma-3-270m", "messages": CHAT, "max_tokens": 8, "temperature": 0, "stream": True}
                with http.stream("POST", "/v1/chat/completions", json=body) as reply:
                    for line in reply.iter_lines():
                        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - started
                    return first

            submit(), api(), api_ttft()  # warm-up
            a_times, b_times, ttft = [], [], []
            for _ in range(args.runs):
                a_times.append(submit())
                b_times.append(api())
                ttft.append(api_ttft())
        finally:
            proc.terminate()
            proc.wait(30)

    engine = Engine(resolve("gemma-3-270m"), n_ctx=2048, n_threads=args.threads)
    job = wire.JobRequest(model=engine.ref, params=wire.SamplingParams(max_tokens=1), max_price=0,
                          client_eth="0x" + "00" * 20, nonce=0, created_at=1, expires_at=2,
                          messages=tuple(wire.ChatMessage(**m) for m in CHAT))
    direct = []
    for _ in range(args.runs + 1):
        started = time.perf_counter()
        engine.generate(engine.prompt_tokens(job), job.params, lambda tok, delta: True)
        direct.append(time.perf_counter() - started)
    direct = direct[1:]
    a, b = statistics.median(a_times), statistics.median(b_times)
    t, d = statistics.median(ttft), statistics.median(direct)
    print(f"(a) `inferad submit` process    median {a * 1000:7.0f} ms  runs {[round(x * 1000) for x in a_times]}")
    print(f"(b) POST /v1/completions        median {b * 1000:7.0f} ms  runs {[round(x * 1000) for x in b_times]}")
    print(f"    ratio b/a = {b / a:.3f}")
    print(f"(c) SSE first token (chat)      median {t * 1000:7.0f} ms  runs {[round(x * 1000) for x in ttft]}")
    print(f"(d) llama.cpp first token       median {d * 1000:7.0f} ms  (same chat prompt, in process)")
    print(f"    ratio c/d = {t / d:.2f}")


if __name__ == "__main__":
    main()
