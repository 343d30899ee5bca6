"""Aggregate tokens/s of N concurrent clients through one node, against llama.cpp batching N itself.

    .venv/bin/python benchmarks/throughput.py [--clients 1 4 16] [--tokens 64] [--n-ctx 512]

For each N, in one run:
(a) llama.cpp alone, in this process, through llama-cpp-python's low-level API: N sequences
    in one context (a KV stream each), prompts prefilled in one batch, then one decode step
    per token for all N at once, each sequence sampling --tokens tokens with its own sampler
    chain (temperature 0.8, seeded): the limit of this hardware for this work;
(b) N HTTP clients at once against one node (--parallel at least N), each streaming
    POST /v1/completions of --tokens sampled tokens (temperature 0.8, its own seed).
Prints aggregate tokens/s of each (tokens over the wall time from the first request to the
last token), b/a, and for (b) the p50/p99 time to the first streamed token and any 429.
Goals (issue 13): b/a >= 0.95 at N = 1 and >= 0.85 at N = 16; no 429 while N <= slots.
Run it alone: on 2 cores anything else running changes every figure.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.overhead import PROMPT, start_node  # noqa: E402

TEMPERATURE = 0.8


def direct_batched(model_path: Path, n: int, tokens: int, n_ctx: int, threads: int) -> float:
    """(a): aggregate tokens/s of ``n`` sequences decoded in one llama.cpp batch."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=64, n_threads=threads, flash_attn=True, verbose=False)
    params = llama_cpp.llama_context_params()  # llama-cpp-python's settings, as the engine takes them
    ctypes.memmove(ctypes.byref(params), ctypes.byref(llm.context_params), ctypes.sizeof(params))
    params.n_ctx, params.n_batch, params.n_ubatch = n * n_ctx, 512, 512
    params.n_seq_max, params.n_threads, params.n_threads_batch, params.kv_unified = n, threads, threads, False
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    batch = llama_cpp.llama_batch_init(max(512, n), 0, 1)
    # llama.cpp's own sampler for the API's defaults (top_p 1, top_k 0) at TEMPERATURE, one seed per
    # client: what llama.cpp alone does (the node samples with its replayable sampler instead)
    samplers = []
    for seq in range(n):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for stage in (llama_cpp.llama_sampler_init_temp(TEMPERATURE), llama_cpp.llama_sampler_init_dist(1000 + seq)):
            llama_cpp.llama_sampler_chain_add(chain, stage)
        samplers.append(chain)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)

    def decode(rows: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(rows)
        for j, (seq, tok, pos, logits) in enumerate(rows):
            batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = tok, pos, 1, logits
            batch.seq_id[j][0] = seq
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    started = time.perf_counter()
    decode([(seq, tok, pos, pos == len(prompt) - 1) for seq in range(n) for pos, tok in enumerate(prompt)])
    rows = [len(prompt) * (seq + 1) - 1 for seq in range(n)]  # each sequence's logits row
    pos = len(prompt)
    for _ in range(tokens):
        sampled = [llama_cpp.llama_sampler_sample(samplers[seq], ctx, rows[seq]) for seq in range(n)]
        decode([(seq, sampled[seq], pos, True) for seq in range(n)])
        rows, pos = list(range(n)), pos + 1
    elapsed = time.perf_counter() - started
    for chain in samplers:
        llama_cpp.llama_sampler_free(chain)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llm.close()
    return n * tokens / elapsed


def through_api(url: str, key: str, n: int, tokens: int) -> tuple[float, list[float], int]:
    """(b): aggregate tokens/s of ``n`` streaming HTTP clients at once; their first-token times (s); 429s."""
    import httpx

    first: list[float] = []
    produced: list[int] = []
    refused: list[int] = []
    start = threading.Barrier(n)

    def client(i: int) -> None:
        body = {"model": "gemma-3-270m", "prompt": PROMPT, "max_tokens": tokens, "temperature": TEMPERATURE,
                "seed": 1000 + i, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
            start.wait()
            began = time.perf_counter()
            with http.stream("POST", "/v1/completions", json=body) as reply:
                if reply.status_code == 429:
                    refused.append(i)
                    return
                reply.raise_for_status()
                seen = False
                for line in reply.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if not seen and chunk.get("choices") and chunk["choices"][0].get("text"):
                        first.append(time.perf_counter() - began)
                        seen = True
                    if chunk.get("usage"):
                        produced.append(chunk["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(produced) / (time.perf_counter() - began), first, len(refused)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=512, help="context of each slot (and each direct sequence)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from inferad.home import Home
    from inferad.models import resolve

    model = resolve("gemma-3-270m")
    slots = max(args.clients)
    print(f"gemma-3-270m, {args.tokens} sampled tokens per client (temperature {TEMPERATURE}), {args.threads} "
          f"llama.cpp threads, n_ctx {args.n_ctx} per sequence, node with --parallel {slots}", flush=True)
    direct = {n: direct_batched(model.path, n, args.tokens, args.n_ctx, args.threads) for n in args.clients}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "node"
        Home(home).ensure()
        key = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--home", str(home)], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        proc, info = start_node(home, args.n_ctx, args.threads, "--api-port", "0", "--parallel", str(slots))
        try:
            through_api(info["api"], key, 1, 4)  # warm-up
            api = {n: through_api(info["api"], key, n, args.tokens) for n in args.clients}
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"{'N':>3} {'(a) llama.cpp tok/s':>20} {'(b) node API tok/s':>19} {'b/a':>6} {'TTFT p50 ms':>12} "
          f"{'TTFT p99 ms':>12} {'429s':>5}")
    for n in args.clients:
        rate, first, refused = api[n]
        print(f"{n:>3} {direct[n]:>20.1f} {rate:>19.1f} {rate / direct[n]:>6.3f} "
              f"{statistics.median(first) * 1000 if first else float('nan'):>12.0f} "
              f"{percentile(first, 0.99) * 1000:>12.0f} {refused:>5}")


if __name__ == "__main__":
    main()
