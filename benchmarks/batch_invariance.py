"""What a batch-invariant engine costs and buys, against the stock engine, in one run.

    .venv/bin/python benchmarks/batch_invariance.py [--clients 16] [--tokens 64] [--runs 3]

Needs ``make llama-invariant`` (the llama.cpp build without llamafile, in build/llama-invariant).
Measures in two processes, one after the other: the venv's llama.cpp with the stock engine
(the baseline), and build/llama-invariant's with ``Engine(batch_invariant=True)``.  For each:

- how far a token's log-probability moves with its batch: ``--clients`` sampled jobs
  (temperature 1.0, logprobs on) decoded side by side, each re-scored alone in one batched
  evaluation, and the largest and median |reported - re-scored| (nats, over every token);
- tokens/s of one job alone, and aggregate tokens/s of ``--clients`` jobs at once
  (``--tokens`` each, medians of ``--runs``);
- re-scoring a 256-token output whole, as ``inferad verify`` does, over generating it.

Prints a table with the ratios invariant / stock.  First, which of llama.cpp's kernels make a
row's logits depend on its batch: for each setting (weights repacked or not, the tiled K-quant
product on or off, flash attention on or off, the build with llamafile or without), 4 prompts
and 96 sampled tokens each, decoded one row at a time and evaluated again in one batch; the
median and largest difference of the top-20 log-probabilities.  Run it alone: on 2 cores
anything else running changes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INVARIANT = ROOT / "build" / "llama-invariant"
PROMPT = "Write a story about the number {}."


KERNELS = (  # (build, repacked weights, tiled K-quant product, flash attention)
    ("stock", True, True, True), ("stock", False, True, True), ("stock", False, False, True),
    ("stock", False, False, False), ("invariant", False, False, True), ("invariant", False, False, False))


def rows_apart(repack: bool, flash_attn: bool, rows: int = 96) -> dict:
    """How far one-row decoding and a batched evaluation of the same tokens part, in this process
    (``GGML_CPU_TILED_MM`` set by the caller): top-20 log-probabilities, median and max (nats)."""
    import llama_cpp
    import llama_cpp.llama
    import numpy as np

    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def model_params():  # Llama() takes no use_extra_bufts: its defaults are where it reads them
        params = defaults()
        params.use_extra_bufts = repack
        return params

    llama_cpp.llama.llama_cpp.llama_model_default_params = model_params
    path = str(__import__("inferad.models", fromlist=["resolve"]).resolve("gemma-3-270m").path)
    llm = llama_cpp.Llama(model_path=path, n_ctx=1024, flash_attn=flash_attn, logits_all=True, verbose=False)
    rng, apart = np.random.default_rng(0), []
    for i in range(4):
        prompt = llm.tokenize(PROMPT.format(i).encode())
        llm.reset()
        llm.eval(prompt)
        decoded, output = [], []
        for _ in range(rows):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            p = np.exp(row - row.max())
            output.append(int(rng.choice(p.size, p=p / p.sum())))
            decoded.append(row)
            llm.eval([output[-1]])
        llm.reset()
        llm.eval(prompt + output)
        for j, one in enumerate(decoded):
            batched = np.array(llm.scores[len(prompt) - 1 + j], dtype=np.float64)
            top = np.argsort(-one)[:20]
            lsm = [x - x.max() - np.log(np.exp(x - x.max()).sum()) for x in (one, batched)]
            apart.append(float(np.abs(lsm[0][top] - lsm[1][top]).max()))
    llm.close()
    return {"median": statistics.median(apart), "max": max(apart)}


def measure(batch_invariant: bool, clients: int, tokens: int, runs: int) -> dict:
    """The figures of one engine, in this process."""
    sys.path.insert(0, str(ROOT))
    from inferad.engine import Engine
    from inferad.models import resolve
    from p2p import wire

    engine = Engine(resolve("gemma-3-270m"), n_ctx=512, n_slots=clients, batch_invariant=batch_invariant)
    params = [wire.SamplingParams(max_tokens=tokens, temperature=1.0, seed=i, logprobs=0) for i in range(clients)]
    prompts = [engine.tokenize(PROMPT.format(i)) for i in range(clients)]

    def together() -> tuple[float, list]:
        out: list = [None] * clients
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, engine.generate(prompts[i], params[i])))
                   for i in range(clients)]
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(len(g.tokens) for g in out) / (time.perf_counter() - t0), out

    engine.generate(prompts[0], params[0])  # warm up
    alone = []
    for run in range(runs):
        t0 = time.perf_counter()
        generation = engine.generate(prompts[run % clients], params[run % clients])
        alone.append(len(generation.tokens) / (time.perf_counter() - t0))
    batched = [together() for _ in range(runs)]
    drift = []
    for prompt, p, generation in zip(prompts, params, batched[-1][1], strict=True):
        rescored = engine.score(prompt, generation.tokens, p)
        drift += [abs(entry.logprob - position.logprob) for entry, position in
                  zip(generation.logprobs, rescored, strict=True)]
    whole = []
    for run in range(runs):
        long = wire.SamplingParams(max_tokens=256, temperature=0.8, top_p=0.95, seed=100 + run)
        t0 = time.perf_counter()
        output = engine.generate(prompts[run], long).tokens
        t1 = time.perf_counter()
        engine.score(prompts[run], output, long, slack=0.06)
        whole.append((time.perf_counter() - t1) / (t1 - t0))
    engine.close()
    return {"drift_max": max(drift), "drift_median": statistics.median(drift),
            "alone": statistics.median(alone), "together": statistics.median(b[0] for b in batched),
            "rescore": statistics.median(whole), "backend": engine.info.backend}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one", choices=("stock", "invariant"), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--rows", metavar="REPACK,FLASH", help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one == "invariant", args.clients, args.tokens, args.runs)))
        return
    if args.rows:
        repack, flash = (x == "1" for x in args.rows.split(","))
        print(json.dumps(rows_apart(repack, flash)))
        return
    if not (INVARIANT / "llama_cpp").is_dir():
        sys.exit("build/llama-invariant is missing: run `make llama-invariant` first (~6 min the first time)")

    def child(build: str, *argv: str, tiled: bool = True) -> dict:
        env = dict(os.environ, GGML_CPU_TILED_MM="1" if tiled else "0")
        if build == "invariant":
            env["PYTHONPATH"] = str(INVARIANT)
        run = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True, check=False)
        if run.returncode:
            sys.exit(f"the {build} run {' '.join(argv)} failed:\n{run.stderr[-3000:]}")
        return json.loads(run.stdout.splitlines()[-1])

    print("| build | repacked weights | tiled K-quant product | flash attention | one row vs a batch: "
          "median / max (nats) |\n|---|---|---|---|---|")
    for build, repack, tiled, flash in KERNELS:
        print(f"measuring rows: {build} {repack} {tiled} {flash}…", file=sys.stderr, flush=True)
        apart = child(build, "--rows", f"{int(repack)},{int(flash)}", tiled=tiled)
        print(f"| {build} | {'yes' if repack else 'no'} | {'on' if tiled else 'off'} | {'on' if flash else 'off'} | "
              f"{apart['median']:.3g} / {apart['max']:.3g} |")
    print()
    figures = {}
    for kind in ("stock", "invariant"):
        print(f"measuring the {kind} engine…", file=sys.stderr, flush=True)
        figures[kind] = child(kind, "--one", kind, "--clients", str(args.clients), "--tokens", str(args.tokens),
                              "--runs", str(args.runs))
    stock, invariant = figures["stock"], figures["invariant"]
    print(f"gemma-3-270m Q4_K_M on CPU, {args.clients} clients x {args.tokens} sampled tokens, medians of "
          f"{args.runs}; stock: {stock['backend']}, invariant: {invariant['backend']}\n")
    print("| | stock engine | batch-invariant engine | invariant / stock |")
    print("|---|---|---|---|")
    print(f"| logprob moved by the batch, max / median (nats) | {stock['drift_max']:.3g} / "
          f"{stock['drift_median']:.3g} | {invariant['drift_max']:.3g} / {invariant['drift_median']:.3g} | |")
    for key, label in (("alone", "one job alone (tokens/s)"),
                       ("together", f"{args.clients} jobs at once (aggregate tokens/s)"),
                       ("rescore", "re-scoring 256 tokens whole / generating them")):
        print(f"| {label} | {stock[key]:.2f} | {invariant[key]:.2f} | {invariant[key] / stock[key]:.2f} |")


if __name__ == "__main__":
    main()
