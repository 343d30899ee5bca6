"""What the network path costs next to llama.cpp alone.

    .venv/bin/python benchmarks/overhead.py [--runs 5] [--tokens 64]

(a) one greedy completion directly with llama-cpp-python in this process;
(b) the same job through a running node (another process), from a client
    that keeps its connection open, as a long-lived client would;
runs alternate a, b, a, b … after one warm-up each; the warm-ups must give the
same tokens, or the benchmark fails (exit 1) before timing anything.  Prints both medians and
b/a (goal <= 1.10), then (c) the fixed cost of one `inferad submit` process
(start-up, imports, connect, a 1-token job): over libp2p (--node; goal < 1 s)
and through the node's control socket (--node-home; goal <= 0.3 s), and
`inferad --help` (goal < 0.5 s).
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

PROMPT = "Write a long story about a dragon who learns to cook."


def start_node(home: Path, n_ctx: int, threads: int, *extra: str) -> tuple[subprocess.Popen, dict]:
    log = open(home.parent / "node.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "start", "--home", str(home), "--listen",
                             "/ip4/127.0.0.1/tcp/0", "--n-ctx", str(n_ctx), "--threads", str(threads),
                             "--log-level", "warning", *extra],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    info_path = home / "node.json"
    for _ in range(600):
        if info_path.exists():
            return proc, json.loads(info_path.read_text())
        if proc.poll() is not None:
            sys.exit(f"node exited: {(home.parent / 'node.log').read_text()}")
        time.sleep(0.1)
    proc.kill()
    sys.exit("node did not start within 60 s")


def same_tokens_or_exit(direct: list[int], node: list[int]) -> None:
    """The node must produce exactly llama.cpp's greedy tokens: timings of different work compare
    nothing, so a difference ends the benchmark with a non-zero exit and says where it starts."""
    if node == direct:
        return
    at = next((i for i, (a, b) in enumerate(zip(direct, node, strict=False)) if a != b),
              min(len(direct), len(node)))
    sys.exit(f"FAIL: the node's tokens differ from llama.cpp's from position {at} of {len(direct)} "
             f"(llama.cpp {direct[at:at + 4]}, node {node[at:at + 4]}, {len(node)} tokens in all); "
             f"the two paths did different work, so their timings are not compared")


def timed_cli(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(ROOT / ".venv/bin/inferad"), *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="llama.cpp threads, the same for (a) and the node in (b)")
    args = parser.parse_args()

    import llama_cpp
    import trio

    from inferad.client import NodeClient, new_job
    from inferad.home import Home
    from inferad.models import resolve
    from p2p import wire

    model = resolve("gemma-3-270m")
    print(f"model {model.name} {model.sha256[:12]}…, {args.tokens} greedy tokens, {args.runs} runs each, "
          f"{args.threads} llama.cpp threads on {os.cpu_count()} cores", flush=True)
    llm = llama_cpp.Llama(str(model.path), n_ctx=args.n_ctx, n_threads=args.threads, flash_attn=True,
                          verbose=False)  # as the engine runs it (inferad.engine.FLASH_ATTENTION)
    prompt_tokens = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)

    def direct() -> tuple[float, list[int]]:
        started = time.perf_counter()
        llm.reset()
        tokens = []
        for tok in llm.generate(prompt_tokens, temp=0.0, reset=True):
            tokens.append(tok)
            if len(tokens) >= args.tokens or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
        return time.perf_counter() - started, tokens

    with tempfile.TemporaryDirectory() as tmp:
        node_home, client_home = Path(tmp) / "node", Path(tmp) / "client"
        client = Home(client_home)
        client.ensure()
        proc, info = start_node(node_home, args.n_ctx, args.threads)
        try:
            ref = wire.ModelRef(sha256=model.sha256, name=model.name)

            async def through_node(node: NodeClient) -> tuple[float, list[int]]:
                job = new_job(ref, client.eth_address, prompt=PROMPT, max_tokens=args.tokens)
                started = time.perf_counter()
                completion = await node.submit(job)
                return time.perf_counter() - started, list(completion.result.output_tokens)

            async def measure() -> tuple[list[float], list[float]]:
                a_times, b_times = [], []
                async with NodeClient.connect(info["addrs"][0], client.client_key) as node:
                    _, expected = direct()
                    _, got = await through_node(node)
                    same_tokens_or_exit(expected, got)
                    for _ in range(args.runs):
                        a_times.append(direct()[0])
                        b_times.append((await through_node(node))[0])
                return a_times, b_times

            a_times, b_times = trio.run(measure)
            llm.close()
            a, b = statistics.median(a_times), statistics.median(b_times)
            print(f"(a) direct llama-cpp-python   median {a * 1000:8.1f} ms  ({args.tokens / a:.1f} tok/s)  "
                  f"runs {[round(t * 1000) for t in a_times]}")
            print(f"(b) through a node (libp2p)   median {b * 1000:8.1f} ms  ({args.tokens / b:.1f} tok/s)  "
                  f"runs {[round(t * 1000) for t in b_times]}")
            print(f"    ratio b/a = {b / a:.3f}   (goal <= 1.10)")

            submit = [timed_cli("submit", "--home", str(client_home), "--node", info["addrs"][0], "Hi",
                                "--max-tokens", "1") for _ in range(args.runs)]
            local = [timed_cli("submit", "--home", str(client_home), "--node-home", str(node_home), "Hi",
                               "--max-tokens", "1") for _ in range(args.runs)]
            helps = [timed_cli("--help") for _ in range(args.runs)]
            print(f"(c) one `inferad submit` process, 1 token: median {statistics.median(submit) * 1000:.0f} ms "
                  f"over libp2p (goal < 1000), {statistics.median(local) * 1000:.0f} ms through the control "
                  f"socket (goal <= 300)")
            print(f"    `inferad --help`:                     median {statistics.median(helps) * 1000:.0f} ms "
                  f"(goal < 500)")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
