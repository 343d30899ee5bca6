"""Re-scoring on the real model: honest results pass, every kind of forgery is caught."""

import random

import pytest

from inferad.engine import Engine
from inferad.models import resolve
from inferad.verification import rescore
from p2p import wire
from proofs.check import Thresholds
from tests.adversaries.forgeries import FORGERIES, forged_result
from tests.factories import WORKER, make_job

pytestmark = pytest.mark.model
GREEDY = dict(max_tokens=24)
SAMPLED = dict(max_tokens=24, temperature=0.8, top_p=0.95, top_k=40, seed=7)


@pytest.fixture(scope="module")
def engine():
    engine = Engine(resolve("gemma-3-270m"), n_ctx=256)
    yield engine
    engine.close()


def run(engine, prompt, params, forge=None, seed=0):
    job = make_job(prompt, model=engine.ref, **params)
    tokens = engine.prompt_tokens(job)
    honest = engine.generate(tokens, job.params).tokens
    claimed = forge(engine, tokens, honest, job.params, random.Random(seed)) if forge else honest
    result = forged_result(engine, "00" * 32, job, tokens, claimed, WORKER)
    return rescore(engine, job, result, Thresholds())


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_honest_results_are_valid(engine, params):
    for prompt in ("The capital of France is", "Write a haiku about rain.", "1, 2, 3,"):
        verdict = run(engine, prompt, params)
        assert verdict.verdict == "valid", (prompt, verdict)


@pytest.mark.parametrize("kind", sorted(FORGERIES))
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_forged_results_are_invalid(engine, kind, params):
    verdict = run(engine, "The history of the city of Lyon begins", params, FORGERIES[kind], seed=3)
    assert verdict.verdict == "invalid", verdict


def test_a_result_naming_another_model_is_invalid(engine):
    job = make_job("Hello", model=engine.ref, **GREEDY)
    tokens = engine.prompt_tokens(job)
    honest = engine.generate(tokens, job.params).tokens
    result = forged_result(engine, "00" * 32, job, tokens, honest, WORKER)
    other = wire.JobResult(**{**result.__dict__, "model": wire.ModelRef(sha256="bb" * 32, name="gemma-3-270m")})
    verdict = rescore(engine, job, other, Thresholds())
    assert verdict.verdict == "invalid" and "model" in verdict.reason
