"""The gateway's checks on a worker's attempt, and failover around a worker that breaks them.

Pure functions and the Router with attempts played by plain async functions: no sockets.
"""

import dataclasses
from functools import partial

import pytest
import trio
from nacl.signing import SigningKey

from inferad.admission import JobRejected
from inferad.gateway import AttemptFailed, ClientGone, Router, check_result, check_tokens
from p2p import wire
from scheduler.peers import PeerTable
from scheduler.ranking import Plan
from tests.factories import make_job, make_result

CLIENT = SigningKey(b"c" * 32)
LIAR, HONEST, GATEWAY = SigningKey(b"l" * 32), SigningKey(b"h" * 32), SigningKey(b"g" * 32)


def peer(key: SigningKey) -> str:
    return wire.peer_id_from_public_key(bytes(key.verify_key))


JOB = wire.decode(wire.sign(make_job(max_tokens=6), CLIENT))
OUTPUT = (11, 12, 13, 14, 15, 16)


def signed_result(key=HONEST, *, tokens=OUTPUT, prefix=0, **changes) -> wire.Envelope:
    result = dataclasses.replace(make_result(JOB.digest, tokens), worker=peer(key), continued_from=prefix, **changes)
    return wire.decode(wire.sign(result, key))


def tokens(ids, start=0) -> list[wire.Token]:
    return [wire.Token(index=start + i, id=t, text=f"<{t}>") for i, t in enumerate(ids)]


def check(envelope, *, worker=HONEST, prefix=(), streamed=OUTPUT) -> None:
    check_result(envelope, job_id=JOB.digest, job=JOB.message, worker=peer(worker), prefix=list(prefix),
                 streamed=tokens(streamed, start=len(prefix)))


# ---------------------------------------------------------------------- check_result

def test_an_honest_result_is_accepted_fresh_and_as_a_continuation():
    check(signed_result())
    check(signed_result(prefix=2), prefix=OUTPUT[:2], streamed=OUTPUT[2:])
    check(signed_result(prefix=6), prefix=OUTPUT, streamed=())  # the previous worker delivered every token


def test_a_result_whose_tokens_differ_from_the_stream_is_refused():
    with pytest.raises(AttemptFailed, match="differs from the streamed tokens"):
        check(signed_result(tokens=(11, 12, 13, 14, 15, 99)))


def test_a_result_signed_by_another_key_than_the_worker_asked_is_refused():
    with pytest.raises(AttemptFailed, match="not signed by the worker asked"):
        check(signed_result(LIAR))
    with pytest.raises(AttemptFailed, match="not signed by the worker asked"):  # names the worker, signed by another
        check(wire.decode(wire.sign(dataclasses.replace(signed_result().message), LIAR)))


def test_a_result_for_another_job_is_refused():
    with pytest.raises(AttemptFailed, match="for another job"):
        check(signed_result(job_id="ab" * 32))


def test_a_result_naming_another_model_is_refused():
    with pytest.raises(AttemptFailed, match="another model"):
        check(signed_result(model=wire.ModelRef(sha256="cd" * 32, name="cheaper-model")))


def test_a_continuation_that_drops_or_rewrites_the_prefix_is_refused():
    with pytest.raises(AttemptFailed, match="prefix"):  # started over: the prefix is not its first tokens
        check(signed_result(tokens=(21, 22, 23, 24, 25, 26)), prefix=OUTPUT[:2], streamed=(23, 24, 25, 26))
    with pytest.raises(AttemptFailed, match="prefix"):  # the right tokens, but claims to have generated them all
        check(signed_result(prefix=0), prefix=OUTPUT[:2], streamed=OUTPUT[2:])


def test_a_message_that_is_not_a_result_is_refused():
    attestation_like = wire.decode(wire.sign(wire.EvidenceRequest(hash="ab" * 32), HONEST))
    with pytest.raises(AttemptFailed, match="expected a result"):
        check(attestation_like)


# ---------------------------------------------------------------------- check_tokens

def test_streamed_tokens_must_continue_the_stream_one_index_at_a_time():
    check_tokens(tokens([1, 2, 3]), prefix=0, streamed=[], max_tokens=6)
    check_tokens(tokens([4, 5], start=3), prefix=2, streamed=tokens([3], start=2), max_tokens=6)
    with pytest.raises(AttemptFailed, match="prefix"):  # a continuation that numbers from 0: it ignored the prefix
        check_tokens(tokens([1, 2]), prefix=2, streamed=[], max_tokens=6)
    with pytest.raises(AttemptFailed, match="was due"):  # a skipped index
        check_tokens([wire.Token(index=0, id=1, text=""), wire.Token(index=2, id=2, text="")], prefix=0,
                     streamed=[], max_tokens=6)


def test_each_choice_numbers_its_own_tokens_and_no_choice_beyond_the_jobs_is_relayed():
    first, second = tokens([1, 2]), [wire.Token(index=i, id=7, text="", choice=1) for i in range(2)]
    check_tokens([first[0], second[0], first[1], second[1]], prefix=0, streamed=[], max_tokens=6, choices=2)
    with pytest.raises(AttemptFailed, match="of choice 1 where 0 was due"):  # choice 0's tokens count for it only
        check_tokens(second[1:], prefix=0, streamed=first, max_tokens=6, choices=2)
    with pytest.raises(AttemptFailed, match="the job has 2 choice"):
        check_tokens([wire.Token(index=0, id=1, text="", choice=2)], prefix=0, streamed=[], max_tokens=6, choices=2)


def test_no_token_beyond_max_tokens_is_relayed():
    check_tokens(tokens([6], start=5), prefix=5, streamed=[], max_tokens=6)
    with pytest.raises(AttemptFailed, match="max_tokens"):
        check_tokens(tokens([6, 7], start=5), prefix=5, streamed=[], max_tokens=6)


# ---------------------------------------------------------------------- Router.route

def route(attempts: dict[str, object], order: list[str], self_id: str = peer(GATEWAY)):
    """Route JOB over ``attempts`` (peer id -> async attempt); (Routed, tokens relayed to the client)."""
    relayed: list[wire.Token] = []

    async def relay(batch):
        relayed.extend(batch)

    async def attempt(peer_id, prefix, forward):
        return await attempts[peer_id](prefix, forward)

    router = Router(self_id, PeerTable())
    routed = trio.run(partial(router.route, JOB.digest, Plan(order=tuple(order)), attempt, relay, job=JOB.message))
    return routed, relayed


def honest_attempt(key=HONEST):
    async def run(prefix, forward):
        await forward(tokens(OUTPUT[len(prefix):], start=len(prefix)))
        data = wire.sign(signed_result(key, prefix=len(prefix)).message, key)
        return data, wire.decode(data)
    return run


def test_a_worker_whose_result_differs_from_its_stream_is_failed_over_and_the_next_continues():
    async def liar(prefix, forward):
        await forward(tokens(OUTPUT[:3]))
        envelope = signed_result(LIAR, tokens=(11, 12, 13, 99, 98, 97))
        return wire.sign(envelope.message, LIAR), envelope

    routed, relayed = route({peer(LIAR): liar, peer(HONEST): honest_attempt()}, [peer(LIAR), peer(HONEST)])
    assert routed.envelope.signer_peer_id == peer(HONEST) and routed.envelope.message.continued_from == 3
    assert [t.id for t in relayed] == list(routed.envelope.message.output_tokens) == list(OUTPUT)
    assert [w["peer"] for w in routed.workers] == [peer(LIAR), peer(HONEST)]
    assert "differs from the streamed tokens" in routed.workers[0]["outcome"]


def test_tokens_that_ignore_the_prefix_never_reach_the_client():
    async def dies(prefix, forward):
        await forward(tokens(OUTPUT[:2]))
        raise AttemptFailed("worker went away")

    async def restarts(prefix, forward):
        await forward(tokens(OUTPUT))  # numbered from 0 although 2 tokens were delivered
        raise AssertionError("the gateway must stop listening at the first bad token")

    liar2 = SigningKey(b"m" * 32)
    routed, relayed = route({peer(LIAR): dies, peer(liar2): restarts, peer(HONEST): honest_attempt()},
                            [peer(LIAR), peer(liar2), peer(HONEST)])
    assert [t.index for t in relayed] == list(range(6)) and [t.id for t in relayed] == list(OUTPUT)
    assert routed.envelope.message.continued_from == 2
    assert routed.workers[1]["tokens"] == 0 and "prefix" in routed.workers[1]["outcome"]


def test_a_remote_worker_that_says_cancelled_is_failed_over_but_a_local_cancel_means_the_client_left():
    async def says_cancelled(prefix, forward):
        raise JobRejected("cancelled", "generation stopped: the client went away")

    routed, _ = route({peer(LIAR): says_cancelled, peer(HONEST): honest_attempt()}, [peer(LIAR), peer(HONEST)])
    assert routed.envelope.signer_peer_id == peer(HONEST)
    assert "cancelled" in routed.workers[0]["outcome"]
    with pytest.raises(ClientGone):
        route({peer(GATEWAY): says_cancelled, peer(HONEST): honest_attempt()}, [peer(GATEWAY), peer(HONEST)])


def test_when_every_worker_lies_the_client_gets_no_worker():
    async def other_job(prefix, forward):
        envelope = signed_result(LIAR, job_id="ab" * 32)
        return wire.sign(envelope.message, LIAR), envelope

    with pytest.raises(JobRejected) as refused:
        route({peer(LIAR): other_job}, [peer(LIAR)])
    assert refused.value.code == "no_worker" and "for another job" in refused.value.message
