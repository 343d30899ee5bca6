"""Which jobs a node takes: the pure rules."""

import time

import pytest

from inferad.admission import JobRejected, check_context, check_served, check_timing
from tests.factories import GEMMA, make_job

SERVED = {GEMMA.sha256: object()}


def check(job, now_ms=None, served=SERVED):
    check_timing(job, now_ms=now_ms or int(time.time() * 1000), max_ttl_s=600, clock_skew_s=60)
    check_served(job, served=served, max_tokens=64)


def rejection(job, **overrides) -> str:
    with pytest.raises(JobRejected) as info:
        check(job, **overrides)
    return info.value.code


def test_fresh_job_for_a_served_model_is_admitted():
    check(make_job())


def test_expired_job_is_rejected():
    assert rejection(make_job(ttl_s=5, age_s=10)) == "expired"


def test_job_from_the_future_is_rejected():
    assert rejection(make_job(), now_ms=int(time.time() * 1000) - 120_000) == "not_yet_valid"


def test_job_living_too_long_is_rejected():
    assert rejection(make_job(ttl_s=3600)) == "ttl_too_long"


def test_unknown_model_is_rejected():
    assert rejection(make_job(), served={}) == "unknown_model"


def test_max_tokens_over_the_node_limit_is_rejected():
    assert rejection(make_job(max_tokens=65)) == "max_tokens"


def test_prompt_plus_max_tokens_must_fit_the_context():
    check_context(100, 28, n_ctx=128)
    with pytest.raises(JobRejected, match="context window of 128"):
        check_context(100, 29, n_ctx=128)
