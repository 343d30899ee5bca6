"""What the OpenAI-compatible HTTP API costs, next to a warm NodeClient and llama.cpp itself.

    .venv/bin/python benchmarks/api_overhead.py [--runs 7] [--tokens 64] [--n-ctx 2048]

One node with the API on 127.0.0.1 (--n-ctx for it and for the in-process
engine alike).  Runs alternate, after one warm-up each:
(a) a greedy job of --tokens tokens through a warm NodeClient (one libp2p
    connection kept open, as benchmarks/overhead.py and long-lived programs do);
(b) the same job (same prompt, greedy: the same tokens) as POST /v1/completions
    from a warm HTTP client.
Prints both medians and b - a, the API's cost per job.  Then time to the
FIRST streamed token of a chat (same messages, greedy):
(c) streamed /v1/chat/completions (SSE): until the first chunk with content;
(d) the same job through the warm NodeClient: until its first token frame;
(e) llama.cpp alone in this process (node stopped): chat template, prompt
    evaluation and one token.
Prints c - e, the API's first-token overhead (goal <= 25 ms), and c - d.
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


def first_content_seconds(http, body: dict) -> float:
    """Seconds from sending a streamed request to the first SSE chunk that carries text."""
    started = time.perf_counter()
    first = None
    with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter() - started
    if first is None:
        raise SystemExit("the stream carried no content")
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import httpx
    import trio

    from inferad.client import NodeClient, new_job
    from inferad.engine import Engine
    from inferad.home import Home
    from inferad.models import resolve
    from p2p import wire

    model = resolve("gemma-3-270m")
    ref = wire.ModelRef(sha256=model.sha256, name=model.name)
    messages = [wire.ChatMessage(**m) for m in CHAT]
    print(f"gemma-3-270m, {args.tokens} greedy tokens, {args.runs} runs each, {args.threads} llama.cpp threads, "
          f"n_ctx {args.n_ctx}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        node_home, client_home = Path(tmp) / "node", Path(tmp) / "client"
        client = Home(client_home)
        client.ensure()
        Home(node_home).ensure()
        key = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--home", str(node_home)], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        proc, info = start_node(node_home, args.n_ctx, args.threads, "--api-port", "0")
        try:
            http = httpx.Client(base_url=info["api"], headers={"Authorization": f"Bearer {key}"}, timeout=120)

            def api() -> float:
                started = time.perf_counter()
                reply = http.post("/v1/completions", json={"model": "gemma-3-270m", "prompt": PROMPT,
                                                           "max_tokens": args.tokens, "temperature": 0})
                reply.raise_for_status()
                return time.perf_counter() - started

            def api_first() -> float:
                return first_content_seconds(http, {"model": "gemma-3-270m", "messages": CHAT, "max_tokens": 8,
                                                    "temperature": 0, "stream": True})

            async def node_job(node: NodeClient) -> float:
                job = new_job(ref, client.eth_address, prompt=PROMPT, max_tokens=args.tokens)
                started = time.perf_counter()
                await node.submit(job)
                return time.perf_counter() - started

            async def node_first(node: NodeClient) -> float:
                job = new_job(ref, client.eth_address, messages=messages, max_tokens=8)
                started, first = time.perf_counter(), []

                def on_token(token: wire.Token) -> None:
                    if not first:
                        first.append(time.perf_counter() - started)

                await node.submit(job, on_token=on_token)
                return first[0]

            async def measure() -> tuple[list[float], list[float], list[float], list[float]]:
                a, b, c, d = [], [], [], []
                async with NodeClient.connect(info["addrs"][0], client.client_key) as node:
                    await node_job(node)  # warm-up, each path once
                    await trio.to_thread.run_sync(api)
                    await trio.to_thread.run_sync(api_first)
                    await node_first(node)
                    for _ in range(args.runs):
                        a.append(await node_job(node))
                        b.append(await trio.to_thread.run_sync(api))
                        c.append(await trio.to_thread.run_sync(api_first))
                        d.append(await node_first(node))
                return a, b, c, d

            a_times, b_times, c_times, d_times = trio.run(measure)
        finally:
            proc.terminate()
            proc.wait(30)

    engine = Engine(model, n_ctx=args.n_ctx, n_threads=args.threads)
    job = new_job(ref, "0x" + "00" * 20, messages=messages, max_tokens=1)
    direct = []
    for _ in range(args.runs + 1):
        started = time.perf_counter()
        engine.generate(engine.prompt_tokens(job), job.params)
        direct.append(time.perf_counter() - started)
    e_times = direct[1:]
    a, b, c, d, e = (statistics.median(x) * 1000 for x in (a_times, b_times, c_times, d_times, e_times))

    def runs(xs: list[float]) -> list[int]:
        return [round(x * 1000) for x in xs]

    print(f"(a) warm NodeClient (libp2p), {args.tokens} tokens  median {a:7.1f} ms  runs {runs(a_times)}")
    print(f"(b) POST /v1/completions, {args.tokens} tokens     median {b:7.1f} ms  runs {runs(b_times)}")
    print(f"    API cost per job b - a = {b - a:+.1f} ms  (b/a = {b / a:.3f})")
    print(f"(c) SSE first content chunk (chat)      median {c:7.1f} ms  runs {runs(c_times)}")
    print(f"(d) NodeClient first token (chat)       median {d:7.1f} ms  runs {runs(d_times)}")
    print(f"(e) llama.cpp first token, in process   median {e:7.1f} ms  runs {runs(e_times)}")
    print(f"    API first-token overhead c - e = {c - e:+.1f} ms (goal <= 25);  c - d = {c - d:+.1f} ms")


if __name__ == "__main__":
    main()
