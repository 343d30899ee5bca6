"""Re-scoring on the real model: honest results pass, every kind of forgery is caught."""

import dataclasses
import random

import pytest

from inferad.engine import Engine
from inferad.models import resolve
from inferad.verification import rescore
from p2p import wire
from proofs.check import Thresholds, judge
from proofs.draw import checked_positions
from tests.adversaries.forgeries import FORGERIES, forged_result
from tests.factories import WORKER, make_job

pytestmark = pytest.mark.model
GREEDY = dict(max_tokens=24)
SAMPLED = dict(max_tokens=24, temperature=0.8, top_p=0.95, top_k=40, seed=7)
MIN_P = dict(max_tokens=24, temperature=1.2, min_p=0.1, seed=11)


@pytest.fixture(scope="module")
def engine():
    engine = Engine(resolve("gemma-3-270m"), n_ctx=256)
    yield engine
    engine.close()


def job_id_of(job):
    return wire.digest(wire.unparse(job))


def run(engine, prompt, params, forge=None, seed=0):
    job = make_job(prompt, model=engine.ref, **params)
    tokens, job_id = engine.prompt_tokens(job), job_id_of(job)
    honest = engine.generate(tokens, job.params, job_id=job_id).tokens
    claimed = forge(engine, tokens, honest, job.params, random.Random(seed), job_id) if forge else honest
    result = forged_result(engine, job_id, job, tokens, claimed, WORKER)
    return rescore(engine, job_id, job, result, Thresholds())


@pytest.mark.parametrize("params", [GREEDY, SAMPLED, MIN_P], ids=["greedy", "sampled", "min_p"])
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
    result = forged_result(engine, job_id_of(job), job, tokens, honest, WORKER)
    other = wire.JobResult(**{**result.__dict__, "model": wire.ModelRef(sha256="bb" * 32, name="gemma-3-270m")})
    verdict = rescore(engine, job_id_of(job), job, other, Thresholds())
    assert verdict.verdict == "invalid" and "model" in verdict.reason


def honest_result(engine, job):
    """What an honest worker signs for ``job``: every choice, log-probabilities when asked."""
    generation = engine.generate(engine.prompt_tokens(job), job.params, job_id=job_id_of(job))
    return wire.JobResult(
        job_id=job_id_of(job), model=engine.ref, output_tokens=tuple(generation.tokens), text=generation.text,
        finish_reason=generation.finish_reason, logprobs=generation.logprobs, choices=generation.choices,
        usage=wire.Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens),
        timings=wire.Timings(queue_ms=0, prompt_ms=0, decode_ms=0), engine=engine.info, worker=WORKER, signed_at=1)


def test_every_choice_of_a_job_is_judged_and_one_forged_choice_makes_the_result_invalid(engine):
    job = make_job("Write a haiku about rain.", model=engine.ref, n=3, **SAMPLED)
    honest, job_id = honest_result(engine, job), job_id_of(job)
    assert rescore(engine, job_id, job, honest, Thresholds()).verdict == "valid"
    tokens = engine.prompt_tokens(job)
    other = engine.generate(engine.tokenize("A recipe for bread:"), job.params, job_id=job_id).tokens
    forged = forged_result(engine, job_id, job, tokens, other, WORKER)  # another prompt's text, same draws
    lie = dataclasses.replace(honest, choices=(honest.choices[0], wire.Choice(
        output_tokens=forged.output_tokens, text=forged.text, finish_reason=forged.finish_reason)),
        usage=wire.Usage(honest.usage.prompt_tokens, len(honest.output_tokens) + len(honest.choices[0].output_tokens)
                         + len(forged.output_tokens)))
    verdict = rescore(engine, job_id, job, lie, Thresholds())
    assert verdict.verdict == "invalid" and verdict.reason.startswith("choice 2:"), verdict
    fewer = dataclasses.replace(honest, choices=honest.choices[:1], usage=wire.Usage(
        honest.usage.prompt_tokens, honest.usage.completion_tokens - len(honest.choices[1].output_tokens)))
    assert rescore(engine, job_id, job, fewer, Thresholds()).verdict == "invalid"


def test_reported_logprobs_that_are_not_the_models_make_the_result_invalid(engine):
    job = make_job("The capital of France is", model=engine.ref, logprobs=2, **GREEDY)
    honest, job_id = honest_result(engine, job), job_id_of(job)
    assert rescore(engine, job_id, job, honest, Thresholds()).verdict == "valid"
    certain = tuple(dataclasses.replace(e, logprob=0.0) for e in honest.logprobs)  # "the model was sure"
    verdict = rescore(engine, job_id, job, dataclasses.replace(honest, logprobs=certain), Thresholds())
    assert verdict.verdict == "invalid" and "log-probability" in verdict.reason, verdict


def test_json_mode_results_are_replayed_under_the_grammar_and_a_token_it_forbids_is_invalid(engine):
    from inferad.grammar import grammar_for

    job = make_job("A person, as JSON:", model=engine.ref, grammar=grammar_for({"type": "json_object"}),
                   **dict(SAMPLED, max_tokens=40))
    honest, job_id = honest_result(engine, job), job_id_of(job)
    assert rescore(engine, job_id, job, honest, Thresholds()).verdict == "valid"
    tokens = engine.prompt_tokens(job)
    words = engine.tokenize("Hello there, this is not JSON at all.")[1:] + [engine._llm.token_eos()]
    prose = forged_result(engine, job_id, job, tokens, words, WORKER)  # ends as a finished answer would
    verdict = rescore(engine, job_id, job, prose, Thresholds())
    assert verdict.verdict == "invalid" and "grammar" in verdict.reason, verdict


def test_a_drawn_verifier_rescores_a_sample_of_32_positions_of_a_long_output(engine):
    job = make_job("Write a long story about a dragon who learns to cook.", model=engine.ref,
                   **dict(SAMPLED, max_tokens=96))
    honest, job_id = honest_result(engine, job), job_id_of(job)
    verdict = rescore(engine, job_id, job, honest, Thresholds(), beacon=b"\7" * 32)
    assert verdict.verdict == "valid" and verdict.metrics["positions"] == 32, verdict
    tokens = engine.prompt_tokens(job)
    spoof = FORGERIES["other_prompt"](engine, tokens, list(honest.output_tokens), job.params, random.Random(1), job_id)
    forged = forged_result(engine, job_id, job, tokens, spoof, WORKER)
    assert rescore(engine, job_id, job, forged, Thresholds(), beacon=b"\7" * 32).verdict == "invalid"


def test_a_drawn_verifier_that_meets_a_draw_in_the_tail_of_float_noise_judges_the_whole_output(engine):
    """One excursion among the drawn positions is allowed, but a spoof that parts from the model by
    about the noise shows more of them where the draw did not look: the whole output decides.  With
    a negative draw_margin, a draw must lie well inside its interval to be unremarkable, so an
    honest output has many excursions, drawn and not."""
    for _ in range(8):  # an output longer than the 32 drawn positions (an early end of text is possible)
        job = make_job("Write a long story about a dragon who learns to cook.", model=engine.ref,
                       max_tokens=96, temperature=1.5, top_p=0.95, top_k=0, seed=3)
        honest, job_id, beacon = honest_result(engine, job), job_id_of(job), b"\7" * 32
        n = len(honest.output_tokens)
        if n > 32:
            break
    assert rescore(engine, job_id, job, honest, Thresholds(), beacon=beacon).metrics["positions"] == 32
    strict = Thresholds(draw_margin=-0.5, excursions_allowed=n, excursion_span=n)
    whole = rescore(engine, job_id, job, honest, strict, beacon=beacon)
    assert whole.verdict == "valid" and whole.metrics["positions"] == n, whole
    drawn = judge(engine.score(engine.prompt_tokens(job), honest.output_tokens, job.params, job_id=job_id,
                               slack=strict.nucleus_slack, only=checked_positions(beacon, job_id, 0, n)),
                  temperature=1.5, thresholds=strict)
    assert drawn.verdict == "valid" and 0 < drawn.metrics["excursions"] < whole.metrics["excursions"]
    as_many_as_drawn = dataclasses.replace(strict, excursions_allowed=drawn.metrics["excursions"])
    verdict = rescore(engine, job_id, job, honest, as_many_as_drawn, beacon=beacon)
    assert verdict.verdict == "invalid" and f"{drawn.metrics['excursions']} allowed in {n} positions" in verdict.reason


def test_a_token_the_grammar_forbids_is_caught_where_no_logits_were_looked_at(engine):
    from inferad.grammar import grammar_for

    job = make_job("A person, as JSON:", model=engine.ref, grammar=grammar_for({"type": "json_object"}),
                   **dict(SAMPLED, max_tokens=64))
    job_id, tokens = job_id_of(job), engine.prompt_tokens(job)
    words = (engine.tokenize(" Hello there, this is not JSON at all." * 6)[1:])[:60] + [engine._llm.token_eos()]
    prose = forged_result(engine, job_id, job, tokens, words, WORKER)
    verdict = rescore(engine, job_id, job, prose, Thresholds(), beacon=b"\3" * 32)
    assert verdict.verdict == "invalid" and "grammar" in verdict.reason, verdict
