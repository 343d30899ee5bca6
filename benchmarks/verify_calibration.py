"""Calibrate the verifier's thresholds: false positives on honest jobs, detection per forgery kind.

    .venv/bin/python benchmarks/verify_calibration.py [--honest 200] [--forged 100] [--max-tokens 32]
                                                      [--batched N]

Runs ``--honest`` honest jobs on gemma-3-270m (half greedy, half sampled
with varied temperature, top-p, top-k and seeds, over varied prompts) and
re-scores each with the shipped thresholds: every ``invalid`` is a false
positive.  Then forges the first ``--forged`` of them in every way a
cheating worker might (tests/adversaries/forgeries.py, plus the output of
another model: the same weights re-quantized to Q4_0 and to Q2_K, a cheaper
model claimed as the real one) and counts how many are caught.  A forgery
whose tokens equal the honest output is no lie and is not counted.

With ``--batched N`` the honest jobs are generated N at a time, each in a
slot of one engine's batch (continuous batching, as a busy node runs them),
and re-scored alone: a false positive there would be batching noise the
thresholds do not absorb.

Prints the worst honest margins next to the thresholds, and a table of
detection rates (goal: 0 false positives, >= 99 % per kind but the single
changed token).
"""

from __future__ import annotations

import argparse
import ctypes
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferad.engine import Engine  # noqa: E402
from inferad.models import LocalModel, resolve  # noqa: E402
from inferad.verification import rescore  # noqa: E402
from proofs.check import Thresholds  # noqa: E402
from tests.adversaries.forgeries import FORGERIES, forged_result, other_model  # noqa: E402
from tests.factories import WORKER, make_job  # noqa: E402

SUBJECTS = ("the moon", "a lighthouse keeper", "prime numbers", "the French revolution", "bread", "a lost cat",
            "photosynthesis", "the stock market", "Lyon", "a robot learning to paint", "rain", "volcanoes",
            "the Roman empire", "chess", "coffee", "a summer in Norway", "black holes", "an old violin",
            "the internet", "honeybees")
FORMS = ("Write a short story about {}.", "Explain {} to a child.", "Three facts about {}:", "A poem about {}:",
         "The most surprising thing about {} is", "Q: What is {}?\nA:", "List the pros and cons of {}.",
         "Once upon a time, {}", "In the news today: {}", "{} can be described as")


def sampling(i: int, rng: random.Random, max_tokens: int) -> dict:
    if i % 2 == 0:
        return dict(max_tokens=max_tokens)
    return dict(max_tokens=max_tokens, temperature=rng.choice((0.5, 0.7, 0.8, 1.0, 1.2)),
                top_p=rng.choice((0.8, 0.9, 0.95, 1.0)), top_k=rng.choice((0, 20, 40, 100)),
                seed=rng.randrange(2**32))


def requantized(model: LocalModel, ftype_name: str, directory: Path) -> LocalModel:
    import llama_cpp

    path = directory / f"other-{ftype_name.lower()}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype_name}")
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(str(model.path).encode(), str(path).encode(), ctypes.byref(params)):
        raise SystemExit(f"cannot re-quantize {model.path} to {ftype_name}")
    return LocalModel(name=f"gemma-3-270m-{ftype_name.lower()}", path=path, sha256="00" * 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--honest", type=int, default=200)
    parser.add_argument("--forged", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batched", type=int, default=1, help="honest jobs generated at once, a slot each")
    args = parser.parse_args()
    rng = random.Random(2026)
    thresholds = Thresholds()
    model = resolve("gemma-3-270m")
    engine = Engine(model, n_ctx=512, n_threads=args.threads, n_slots=args.batched)
    tmp = Path(tempfile.mkdtemp(prefix="inferad-calibration-"))
    forgeries = dict(FORGERIES)
    for ftype in ("Q4_0", "Q2_K") if args.forged else ():
        other = Engine(requantized(model, ftype, tmp), n_ctx=512, n_threads=args.threads, n_slots=1)
        forgeries[f"other_model_{ftype.lower()}"] = other_model(other)

    jobs = []
    false_positives, gaps, zs, floors, seconds = [], [], [], [], []
    started = time.perf_counter()
    specs = [make_job(rng.choice(FORMS).format(rng.choice(SUBJECTS)), model=engine.ref,
                      **sampling(i, rng, args.max_tokens)) for i in range(args.honest)]
    outputs: list[list[int]] = [[] for _ in specs]

    def generate(i: int) -> None:
        outputs[i] = engine.generate(engine.prompt_tokens(specs[i]), specs[i].params).tokens

    for first in range(0, len(specs), args.batched):  # generated side by side, a slot each
        threads = [threading.Thread(target=generate, args=(i,)) for i in range(first, min(first + args.batched,
                                                                                          len(specs)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for i, job in enumerate(specs):
        prompt, honest = engine.prompt_tokens(job), outputs[i]
        t0 = time.perf_counter()
        verdict = rescore(engine, job, forged_result(engine, "00" * 32, job, prompt, honest, WORKER), thresholds)
        seconds.append(time.perf_counter() - t0)
        if job.params.temperature == 0:
            gaps.append(verdict.metrics.get("max_gap", 0.0))
        else:
            zs.append(verdict.metrics.get("z", 0.0))
            floors.append(verdict.metrics.get("min_logprob", 0.0))
        if verdict.verdict != "valid":
            false_positives.append((job.prompt, job.params, verdict))
            print(f"\nfalse positive: {job.prompt!r} {job.params}: {verdict.reason}", file=sys.stderr)
        jobs.append((job, prompt, honest))
        print(f"\rhonest {i + 1}/{args.honest}  false positives {len(false_positives)}  "
              f"{time.perf_counter() - started:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    rows = []
    for kind, forge in forgeries.items():
        caught, counted, identical = {"greedy": 0, "sampled": 0}, {"greedy": 0, "sampled": 0}, 0
        for n, (job, prompt, honest) in enumerate(jobs[: args.forged]):
            claimed = forge(engine, prompt, honest, job.params, random.Random(n))
            result = forged_result(engine, "00" * 32, job, prompt, claimed, WORKER)
            if list(result.output_tokens) == honest:
                identical += 1
                continue
            mode = "greedy" if job.params.temperature == 0 else "sampled"
            counted[mode] += 1
            caught[mode] += rescore(engine, job, result, thresholds).verdict == "invalid"
            print(f"\r{kind}: {n + 1}/{args.forged}", end="", file=sys.stderr, flush=True)
        rows.append((kind, caught, counted, identical))
        print(file=sys.stderr)

    print(f"\nhonest jobs: {args.honest} ({len(gaps)} greedy, {len(zs)} sampled), {args.max_tokens} tokens max, "
          f"generated {args.batched} at a time, gemma-3-270m Q4_K_M on CPU")
    print(f"false positives: {len(false_positives)}")
    for prompt, params, verdict in false_positives:
        print(f"  {prompt!r} {params}: {verdict.reason}")
    print(f"greedy: largest gap to the top token {max(gaps):.3f} nats (margin {thresholds.greedy_margin}); "
          f"median {statistics.median(gaps):.3f}")
    print(f"sampled: lowest z {min(zs):.2f} (threshold {thresholds.min_z}); lowest token log-probability "
          f"{min(floors):.2f} (floor {thresholds.logprob_floor})")
    print(f"re-score time per honest job: median {statistics.median(seconds) * 1000:.0f} ms\n")
    def rate(c: int, n: int) -> str:
        return f"{c}/{n} = {100 * c / n:.1f} %" if n else "-"

    print("| forgery | greedy caught | sampled caught | all | identical to honest (not counted) |")
    print("|---|---|---|---|---|")
    for kind, caught, counted, identical in rows:
        print(f"| {kind} | {rate(caught['greedy'], counted['greedy'])} | {rate(caught['sampled'], counted['sampled'])}"
              f" | {rate(sum(caught.values()), sum(counted.values()))} | {identical} |")


if __name__ == "__main__":
    main()
