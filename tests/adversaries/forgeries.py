"""Forged outputs, as a cheating worker would make them (for tests and the calibration benchmark).

Each forgery takes the honest output of a job (and the job's id, whose public
draws a sampled forgery uses as an honest worker would) and returns the tokens a
cheater would claim instead; :func:`forged_result` wraps them in a result
whose text, usage and finish reason are consistent with those tokens, so a
verifier has to catch the lie in the tokens themselves.
"""

from __future__ import annotations

import random
import time

from inferad.engine import Engine, replay_output
from p2p import wire

OTHER_PROMPTS = ("A recipe for bread: flour, water, salt and", "The rules of chess say that",
                 "def fibonacci(n):", "Dear customer, we regret to inform you")


def truncated(engine: Engine, prompt: list[int], honest: list[int], params, rng: random.Random,
              job_id: str) -> list[int]:
    """Cut short, ending with an end-of-sequence token as if the model had stopped."""
    eog = engine._llm.token_eos()
    return honest[: max(len(honest) // 2, 1)] + [eog]


def random_tokens(engine, prompt, honest, params, rng, job_id) -> list[int]:
    return [rng.randrange(1_000, engine._llm.n_vocab()) for _ in honest]


def one_token_changed(engine, prompt, honest, params, rng, job_id) -> list[int]:
    i = rng.randrange(len(honest))
    other = rng.randrange(1_000, engine._llm.n_vocab())
    return honest[:i] + [other if other != honest[i] else other + 1] + honest[i + 1:]


def other_prompt(engine, prompt, honest, params, rng, job_id) -> list[int]:
    """Another prompt's output, drawn with this job's public numbers."""
    tokens = engine.tokenize(rng.choice(OTHER_PROMPTS))
    return engine.generate(tokens, params, job_id=job_id).tokens


def prefix_then_other(engine, prompt, honest, params, rng, job_id) -> list[int]:
    """An honest start (what a spot check of the first tokens would see), then other text."""
    keep = max(len(honest) // 3, 1)
    rest = other_prompt(engine, prompt, honest, params, rng, job_id)
    return (honest[:keep] + rest)[: len(honest)]


def other_model(other: Engine):
    """The output of a different (cheaper) model, claimed as the job's model: the spoof that beats
    plain re-scoring, since it decodes with the job's own public draws."""
    def forge(engine, prompt, honest, params, rng, job_id) -> list[int]:
        return other.generate(prompt, params, job_id=job_id).tokens
    return forge


FORGERIES = {"truncated": truncated, "random_tokens": random_tokens, "one_token_changed": one_token_changed,
             "other_prompt": other_prompt, "prefix_then_other": prefix_then_other}


def forged_result(engine: Engine, job_id: str, job: wire.JobRequest, prompt: list[int], tokens: list[int],
                  worker: str) -> wire.JobResult:
    """A result for ``tokens`` that is self-consistent (text, usage, finish reason)."""
    replay = replay_output(tokens, job.params, lambda tok: engine._llm.detokenize([tok], special=False),
                           engine._is_eog)
    kept = tokens[: len(tokens) - replay.tokens_after_end]
    return wire.JobResult(
        job_id=job_id, model=job.model, output_tokens=tuple(kept), text=replay.text,
        finish_reason=replay.finish_reason or "stop",
        usage=wire.Usage(prompt_tokens=len(prompt), completion_tokens=len(kept)),
        timings=wire.Timings(queue_ms=0, prompt_ms=1, decode_ms=1), engine=engine.info, worker=worker,
        signed_at=time.time_ns() // 1_000_000)
