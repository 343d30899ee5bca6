"""Calibrate the verifier's thresholds: false positives on honest jobs, detection per forgery kind.

    .venv/bin/python benchmarks/verify_calibration.py [--honest 500] [--batched 16] [--max-tokens 32]
                                                      [--sampling 1.5,0.95,0]
                                                      [--forged 20] [--lengths 32,64,128,256]
                                                      [--kinds other_model_q4_0,...] [--drawn]
                                                      [--batch-invariant]

Runs ``--honest`` honest jobs on gemma-3-270m (a quarter greedy, the rest sampled at
temperatures 0.3, 0.7, 1.0 and 1.5 with top-p and top-k mixes, over varied prompts), generated
``--batched`` at a time, each in a slot of one engine's batch (continuous batching, as a busy
node runs them), and re-scores each alone with the shipped thresholds: every ``invalid`` is a
false positive.  With ``--batch-invariant`` the engine is batch-invariant and the thresholds are
``Thresholds.exact()`` (run it with ``PYTHONPATH=build/llama-invariant``, after ``make llama-invariant``).
Prints the worst honest figures next to the thresholds: the greedy gap (nats)
and, for sampled jobs, how far a public draw fell outside the claimed token's interval as the
verifier computes it (probability mass) and how many positions were ambiguous.  With
``--sampling T,TOP_P,TOP_K`` every honest job is sampled so (the hardest case: 1.5,0.95,0).

Then, for each output length of ``--lengths``, forges ``--forged`` sampled jobs in every way a
cheating worker might (tests/adversaries/forgeries.py; the spoofs decode with the job's own
public draws: another prompt, and the same weights re-quantized to Q4_0 and to Q2_K, a cheaper
model claimed as the real one) and prints the share caught, with the rate it shows at 95 %
confidence (one-sided Clopper-Pearson: 300 caught of 300 shows 99 %); every position is re-scored, as
``inferad verify`` does, and with ``--drawn`` also only a beacon's 32 drawn positions (the whole
output after an excursion among them), as a drawn verifier does.  A forgery whose tokens
equal the honest output is no lie and is not counted.  Goal: 0 false positives; >= 99 % per kind at 32
tokens, except the single changed token (caught only where it was unlikely).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import math
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
from p2p import wire  # noqa: E402
from proofs.check import Thresholds, Verdict  # noqa: E402
from tests.adversaries.forgeries import FORGERIES, forged_result, other_model  # noqa: E402
from tests.factories import WORKER, make_job  # noqa: E402

SUBJECTS = ("the moon", "a lighthouse keeper", "prime numbers", "the French revolution", "bread", "a lost cat",
            "photosynthesis", "the stock market", "Lyon", "a robot learning to paint", "rain", "volcanoes",
            "the Roman empire", "chess", "coffee", "a summer in Norway", "black holes", "an old violin",
            "the internet", "honeybees")
FORMS = ("Write a short story about {}.", "Explain {} to a child.", "Three facts about {}:", "A poem about {}:",
         "The most surprising thing about {} is", "Q: What is {}?\nA:", "List the pros and cons of {}.",
         "Once upon a time, {}", "In the news today: {}", "{} can be described as")


def sampling(i: int, rng: random.Random, max_tokens: int, fixed: dict | None = None) -> dict:
    """The ``i``-th honest job's parameters: greedy one time in four, else the mix; with ``fixed``
    (temperature, top_p, top_k), always those."""
    if fixed:
        return dict(max_tokens=max_tokens, seed=rng.randrange(2**32), **fixed)
    if i % 4 == 0:
        return dict(max_tokens=max_tokens)
    return dict(max_tokens=max_tokens, temperature=(0.3, 0.7, 1.0, 1.5)[i % 4],
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


def job_id_of(job: wire.JobRequest) -> str:
    return wire.digest(wire.unparse(job))


def generate_all(engine: Engine, specs: list, batched: int) -> list[list[int]]:
    """The honest outputs of ``specs``, generated ``batched`` at a time (a slot each)."""
    outputs: list[list[int]] = [[] for _ in specs]

    def generate(i: int) -> None:
        outputs[i] = engine.generate(engine.prompt_tokens(specs[i]), specs[i].params, job_id=job_id_of(specs[i])).tokens

    for first in range(0, len(specs), batched):
        threads = [threading.Thread(target=generate, args=(i,)) for i in range(first, min(first + batched, len(specs)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return outputs


def escaped(kind: str, job: wire.JobRequest, honest: list[int], claimed: list[int], verdict: Verdict) -> str:
    """One line on a forgery the verifier let through: its sampling parameters, the first token
    where it parts from the honest output (before it, its tokens are honest ones), and the
    positions the verifier found ambiguous."""
    first = next((i for i, (a, b) in enumerate(zip(honest, claimed, strict=False)) if a != b),
                 min(len(honest), len(claimed)))
    p = job.params
    return (f"  {kind}: temperature {p.temperature} top_p {p.top_p} top_k {p.top_k}; parts from the honest "
            f"output at token {first} of {len(claimed)}; {verdict.metrics.get('ambiguous', 0)} ambiguous "
            f"positions ({verdict.verdict})")


def lower_bound(caught: int, counted: int, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson lower bound on a detection rate: the p at which catching
    ``caught`` or more of ``counted`` forgeries has probability ``1 - confidence`` (with all
    caught, ``(1 - confidence) ** (1 / counted)``: 300 of 300 shows >= 99.0 %)."""
    if caught == 0:
        return 0.0

    def tail(p: float) -> float:  # P(X >= caught), X ~ Binomial(counted, p): rises with p
        return sum(math.comb(counted, k) * p**k * (1 - p) ** (counted - k) for k in range(caught, counted + 1))

    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if tail(mid) < 1 - confidence else (low, mid)
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--honest", type=int, default=500)
    parser.add_argument("--forged", type=int, default=20, help="sampled forgeries per kind and length")
    parser.add_argument("--max-tokens", type=int, default=32, help="of the honest jobs")
    parser.add_argument("--lengths", default="32,64,128,256", help="output lengths of the forgeries")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--batched", type=int, default=16, help="honest jobs generated at once, a slot each")
    parser.add_argument("--drawn", action="store_true",
                        help="also judge each forgery as a drawn verifier does (its beacon's 32 positions)")
    parser.add_argument("--kinds", default="", help="forgery kinds to run, comma-separated (default: every kind)")
    parser.add_argument("--sampling", metavar="T,TOP_P,TOP_K", default="",
                        help="every honest job at this temperature, top-p and top-k (default: the mix)")
    parser.add_argument("--batch-invariant", action="store_true",
                        help="generate and re-score on a batch-invariant engine, judged with the exact thresholds "
                             "(needs the build of `make llama-invariant` first on PYTHONPATH)")
    args = parser.parse_args()
    fixed = None
    if args.sampling:
        try:
            temperature, top_p, top_k = args.sampling.split(",")
            fixed = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
        except ValueError:
            parser.error(f"--sampling wants temperature,top_p,top_k (like 1.5,0.95,0), not {args.sampling!r}")
    lengths = [int(x) for x in args.lengths.split(",") if x] if args.forged else []
    rng = random.Random(2026)
    thresholds = Thresholds.exact() if args.batch_invariant else Thresholds()
    model = resolve("gemma-3-270m")
    engine = Engine(model, n_ctx=512, n_threads=args.threads, n_slots=args.batched,
                    batch_invariant=args.batch_invariant)
    tmp = Path(tempfile.mkdtemp(prefix="inferad-calibration-"))
    forgeries = dict(FORGERIES)
    for ftype in ("Q4_0", "Q2_K") if args.forged else ():
        if not args.kinds or f"other_model_{ftype.lower()}" in args.kinds.split(","):
            other = Engine(requantized(model, ftype, tmp), n_ctx=512, n_threads=args.threads, n_slots=1)
            forgeries[f"other_model_{ftype.lower()}"] = other_model(other)
    if args.kinds:
        unknown = set(args.kinds.split(",")) - set(forgeries)
        if unknown:
            parser.error(f"unknown forgery kind(s) {', '.join(sorted(unknown))}; known: {', '.join(forgeries)}")
        forgeries = {kind: forge for kind, forge in forgeries.items() if kind in args.kinds.split(",")}

    false_positives, gaps, misses, ambiguous, excursions, positions, seconds = [], [], [], 0, 0, 0, []
    started = time.perf_counter()
    specs = [make_job(rng.choice(FORMS).format(rng.choice(SUBJECTS)), model=engine.ref,
                      **sampling(i, rng, args.max_tokens, fixed)) for i in range(args.honest)]
    outputs = generate_all(engine, specs, args.batched)
    for i, job in enumerate(specs):
        prompt, honest, job_id = engine.prompt_tokens(job), outputs[i], job_id_of(job)
        t0 = time.perf_counter()
        verdict = rescore(engine, job_id, job, forged_result(engine, job_id, job, prompt, honest, WORKER), thresholds)
        seconds.append(time.perf_counter() - t0)
        if job.params.temperature == 0:
            gaps.append(verdict.metrics.get("max_gap", 0.0))
        else:
            misses.append(verdict.metrics.get("max_miss", 0.0))
            ambiguous += verdict.metrics.get("ambiguous", 0)
            excursions += verdict.metrics.get("excursions", 0)
            positions += verdict.metrics.get("positions", 0)
        if verdict.verdict != "valid":
            false_positives.append((job.prompt, job.params, verdict))
            print(f"\nfalse positive: {job.prompt!r} {job.params}: {verdict.reason}", file=sys.stderr)
        print(f"\rhonest {i + 1}/{args.honest}  false positives {len(false_positives)}  "
              f"{time.perf_counter() - started:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    rows, passed = {}, []  # kind -> length -> (caught, counted, identical); forgeries not caught
    for length in lengths:
        forged_specs = [make_job(rng.choice(FORMS).format(rng.choice(SUBJECTS)), model=engine.ref,
                                 **sampling(4 * n + 1 + n % 3, rng, length)) for n in range(args.forged)]
        honest_outputs = generate_all(engine, forged_specs, args.batched)
        for kind, forge in forgeries.items():
            caught = counted = identical = drawn_caught = 0
            for n, (job, honest) in enumerate(zip(forged_specs, honest_outputs, strict=True)):
                prompt, job_id = engine.prompt_tokens(job), job_id_of(job)
                claimed = forge(engine, prompt, honest, job.params, random.Random(n), job_id)
                result = forged_result(engine, job_id, job, prompt, claimed, WORKER)
                if list(result.output_tokens) == honest:
                    identical += 1
                    continue
                counted += 1
                verdict = rescore(engine, job_id, job, result, thresholds)
                caught += verdict.verdict == "invalid"
                if verdict.verdict != "invalid":
                    passed.append(escaped(kind, job, honest, list(result.output_tokens), verdict))
                if args.drawn:
                    beacon = hashlib.sha256(f"beacon {length} {n}".encode()).digest()
                    drawn_caught += rescore(engine, job_id, job, result, thresholds, beacon).verdict == "invalid"
                print(f"\r{length} tokens, {kind}: {n + 1}/{args.forged}", end="", file=sys.stderr, flush=True)
            rows.setdefault(kind, {})[length] = (caught, counted, identical)
            if args.drawn:
                rows.setdefault(f"{kind}, drawn verifier", {})[length] = (drawn_caught, counted, identical)
        print(file=sys.stderr)

    mix = "temperature {temperature}, top-p {top_p}, top-k {top_k}".format(**fixed) if fixed \
        else "temperatures 0.3-1.5"
    print(f"\nhonest jobs: {args.honest} ({len(gaps)} greedy, {len(misses)} sampled at {mix}), "
          f"{args.max_tokens} tokens max, generated {args.batched} at a time, gemma-3-270m Q4_K_M on CPU"
          + (", batch-invariant engine, exact thresholds" if args.batch_invariant else ""))
    print(f"false positives: {len(false_positives)}")
    for prompt, params, verdict in false_positives:
        print(f"  {prompt!r} {params}: {verdict.reason}")
    if gaps:
        print(f"greedy: largest gap to the top token {max(gaps):.3f} nats (margin {thresholds.greedy_margin}); "
              f"median {statistics.median(gaps):.3f}")
    if misses:
        print(f"sampled: largest miss of a public draw {max(misses):.4f} of the mass (inside what "
              f"{thresholds.draw_margin} nats of logit noise explains); "
              f"ambiguous positions {ambiguous}/{positions} = {100 * ambiguous / max(positions, 1):.2f} %, of "
              f"them {excursions} beyond it (within {thresholds.excursion_margin} nats: "
              f"{thresholds.excursions_allowed} a choice allowed per {thresholds.excursion_span} positions)")
    if seconds:
        print(f"re-score time per honest job: median {statistics.median(seconds) * 1000:.0f} ms")
    print()
    if not rows:
        return
    print("sampled forgeries caught, by output length (in brackets: the rate shown at 95 % confidence):\n")
    print("| forgery | " + " | ".join(f"{n} tokens" for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for kind, by_length in rows.items():
        cells = []
        for n in lengths:
            caught, counted, identical = by_length[n]
            cells.append(f"{caught}/{counted} = {100 * caught / counted:.1f} % "
                         f"(≥ {100 * lower_bound(caught, counted):.1f} %)" if counted else f"- ({identical} identical)")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    if passed:
        print("\nforgeries not caught:")
        print("\n".join(passed))


if __name__ == "__main__":
    main()
