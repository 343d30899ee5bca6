"""Run by tests/test_batch_invariance.py in a process of its own, on the llama.cpp build of `make
llama-invariant` (PYTHONPATH=build/llama-invariant): prints one JSON object of what it saw."""

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inferad.engine import Engine  # noqa: E402
from inferad.models import resolve  # noqa: E402
from inferad.verification import rescore  # noqa: E402
from proofs.check import Thresholds  # noqa: E402
from tests.adversaries.forgeries import forged_result  # noqa: E402
from tests.factories import WORKER, make_job  # noqa: E402
from tests.test_engine import side_by_side  # noqa: E402

MIXES = [dict(), dict(temperature=0.7, top_p=0.9), dict(temperature=1.0, top_k=40), dict(temperature=1.5, top_p=0.95)]


def main() -> None:
    model = resolve("gemma-3-270m")
    exact = Engine(model, n_ctx=256, n_slots=16, batch_invariant=True)
    jobs = [make_job(f"Write one sentence about the number {i}.", model=exact.ref, max_tokens=24, seed=i,
                     **MIXES[i % 4]) for i in range(16)]
    ids = [hashlib.sha256(f"job {i}".encode()).hexdigest() for i in range(16)]
    prompts = [exact.prompt_tokens(job) for job in jobs]
    serial = [exact.generate(p, j.params, job_id=i).tokens for p, j, i in zip(prompts, jobs, ids, strict=True)]
    together = side_by_side([lambda p=p, j=j, i=i: exact.generate(p, j.params, job_id=i).tokens
                             for p, j, i in zip(prompts, jobs, ids, strict=True)])
    verdicts = [rescore(exact, i, j, forged_result(exact, i, j, p, t, WORKER), Thresholds())
                for p, j, i, t in zip(prompts, jobs, ids, together, strict=True)]
    # The same sampled jobs decoded by the stock kernels (repacked weights, flash attention), 8 at a time:
    # honest tokens whose logits differ from the exact engine's by float noise.
    stock = Engine(model, n_ctx=256, n_slots=8)
    hot = [make_job(f"A story about the number {i}:", model=stock.ref, max_tokens=32, seed=i, temperature=1.5,
                    top_p=0.95) for i in range(8)]
    hot_ids = [hashlib.sha256(f"hot {i}".encode()).hexdigest() for i in range(8)]
    noisy = side_by_side([lambda j=j, i=i: stock.generate(stock.prompt_tokens(j), j.params, job_id=i).tokens
                          for j, i in zip(hot, hot_ids, strict=True)])
    as_stock, as_exact = [], []
    for job, job_id, tokens in zip(hot, hot_ids, noisy, strict=True):
        prompt = exact.prompt_tokens(job)
        as_stock.append(rescore(exact, job_id, job, forged_result(stock, job_id, job, prompt, tokens, WORKER),
                                Thresholds()).verdict)
        as_exact.append(rescore(exact, job_id, job, forged_result(exact, job_id, job, prompt, tokens, WORKER),
                                Thresholds()).verdict)
    stock.close()
    exact.close()
    print(json.dumps({"backend": exact.info.backend, "serial": serial, "together": together,
                      "verdicts": [v.verdict for v in verdicts],
                      "misses": [v.metrics.get("max_miss", 0.0) for v in verdicts],
                      "ambiguous": sum(v.metrics.get("ambiguous", 0) for v in verdicts),
                      "stock_claimed_as_stock": as_stock, "stock_claimed_as_exact": as_exact}))


if __name__ == "__main__":
    main()
