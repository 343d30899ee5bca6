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


# ---------------------------------------------------------------- results and expiry (docs/protocol.md, "Expiry")


def test_a_worker_signs_only_before_its_job_expires():
    from inferad.admission import check_signing

    job = make_job(ttl_s=60)
    assert check_signing(job, now_ms=job.expires_at - 1) == job.expires_at - 1  # the result's signed_at
    for late in (job.expires_at, job.expires_at + 1000):
        with pytest.raises(JobRejected, match="never signed after expiry") as info:
            check_signing(job, now_ms=late)
        assert info.value.code == "expired"


def test_a_gateway_delivers_no_result_signed_or_arrived_after_expiry():
    from inferad.admission import check_delivery
    from tests.factories import make_result

    job = make_job(ttl_s=60)
    check_delivery(job, make_result(signed_at=job.expires_at - 1), now_ms=job.expires_at - 1)
    with pytest.raises(JobRejected, match="signed its result 1.0 s after") as info:
        check_delivery(job, make_result(signed_at=job.expires_at + 1000), now_ms=job.expires_at - 1)
    assert info.value.code == "expired"
    with pytest.raises(JobRejected, match="arrived 0.0 s after the job expired") as info:
        check_delivery(job, make_result(signed_at=job.expires_at - 5), now_ms=job.expires_at)
    assert info.value.code == "expired"


def test_an_expired_attempt_ends_the_route_instead_of_trying_the_next_worker():
    import trio

    from inferad.gateway import Router
    from scheduler.peers import PeerTable
    from scheduler.ranking import Plan

    tried = []

    async def attempt(peer_id, prefix, relay):
        tried.append(peer_id)
        raise JobRejected("expired", "the result arrived 0.2 s after the job expired")

    async def relay(tokens):
        pass

    router = Router("self", PeerTable())
    with pytest.raises(JobRejected) as info:
        trio.run(router.route, "00" * 32, Plan(order=("a", "b", "c")), attempt, relay)
    assert (info.value.code, tried) == ("expired", ["a"])


def test_the_cli_never_builds_a_job_a_default_node_refuses():
    import cli
    from inferad.config import Config

    options = {p.name: p.type for p in cli.submit.params}
    assert (options["ttl"].min, options["ttl"].max) == (1, Config().max_job_ttl)
    assert (options["max_tokens"].min, options["max_tokens"].max) == (1, Config().max_tokens)
