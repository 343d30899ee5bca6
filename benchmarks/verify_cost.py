"""What verification costs next to generation, per verified job and network-wide.

    .venv/bin/python benchmarks/verify_cost.py [--runs 5] [--threads 0] [--batch-invariant]

For 64- and 256-token outputs (greedy and sampled) on gemma-3-270m: the
median time to generate the output with llama.cpp (the baseline, measured
in the same run) and to re-score it as a drawn verifier does (structural
replay, one teacher-forced evaluation with logits at the 32 positions the
beacon draws, the per-position checks), and as ``inferad verify`` does a
receipt (every position); ratios to generating (goals for a drawn verifier:
<= 0.25 at 64 tokens, <= 0.15 at 256).
Then the network-wide overhead: verifiers x draw probability x ratio, at a
new worker's draw rate (1) and at the steady-state floor.  With ``--batch-invariant``, on a
batch-invariant engine, whose results are checked exactly (``PYTHONPATH=build/llama-invariant``,
after ``make llama-invariant``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferad.config import Config  # noqa: E402
from inferad.engine import Engine  # noqa: E402
from inferad.models import resolve  # noqa: E402
from inferad.verification import rescore  # noqa: E402
from p2p import wire  # noqa: E402
from proofs.check import Thresholds  # noqa: E402
from proofs.draw import CHECKED_POSITIONS  # noqa: E402
from tests.adversaries.forgeries import forged_result  # noqa: E402
from tests.factories import WORKER, make_job  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to cook."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batch-invariant", action="store_true", help="on a batch-invariant engine")
    args = parser.parse_args()
    engine = Engine(resolve("gemma-3-270m"), n_ctx=1024, n_threads=args.threads, batch_invariant=args.batch_invariant)
    config = Config()
    print(f"gemma-3-270m on CPU ({engine.info.backend}), {args.runs} runs each, medians; a drawn verifier re-scores "
          f"{CHECKED_POSITIONS} positions drawn by the beacon, a receipt (inferad verify) every one\n")
    print("| output | sampler | generate | drawn verifier | ratio | whole output | ratio |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for tokens in (64, 256):
        for name, params in (("greedy", {}), ("sampled", dict(temperature=0.8, top_p=0.95, top_k=40))):
            generate, drawn, whole = [], [], []
            for run in range(args.runs + 1):  # the first run warms up and is not counted
                job = make_job(PROMPT, model=engine.ref, max_tokens=tokens, seed=run, **params)
                prompt, job_id = engine.prompt_tokens(job), wire.digest(wire.unparse(job))
                t0 = time.perf_counter()
                output = engine.generate(prompt, job.params, job_id=job_id).tokens
                t1 = time.perf_counter()
                result = forged_result(engine, job_id, job, prompt, output, WORKER)
                verdicts = [rescore(engine, job_id, job, result, Thresholds(), beacon=bytes([run]) * 32)]
                t2 = time.perf_counter()
                verdicts.append(rescore(engine, job_id, job, result, Thresholds()))
                t3 = time.perf_counter()
                assert all(v.verdict == "valid" for v in verdicts), verdicts
                if run:
                    generate.append(t1 - t0)
                    drawn.append(t2 - t1)
                    whole.append(t3 - t2)
            base = statistics.median(generate)
            ratio = statistics.median(drawn) / base
            worst = max(worst, ratio)
            print(f"| {tokens} tokens | {name} | {base:.2f} s | {statistics.median(drawn):.2f} s | {ratio:.2f} | "
                  f"{statistics.median(whole):.2f} s | {statistics.median(whole) / base:.2f} |")
    k, floor = config.verifiers, config.probability_floor
    print(f"\nnetwork-wide overhead = verifiers ({k}) x draw probability x ratio (worst {worst:.2f}):")
    print(f"  new worker (p = 1): {k * worst:.2f} of its generation time")
    print(f"  steady state (p = {floor}): {k * floor * worst:.3f}")


if __name__ == "__main__":
    main()
