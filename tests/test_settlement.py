"""The settlement builder: charges backed by signed evidence, rewards that add up."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from chain.merkle import build_tree, verify
from chain.settlement import ServedJob, SettlementError, build_settlement, verify_served_job
from p2p import wire
from tests.factories import make_job, make_result

CLIENT, WORKER = SigningKey(b"c" * 32), SigningKey(b"w" * 32)
WORKER_PEER = wire.peer_id_from_public_key(bytes(WORKER.verify_key))
WORKER_ETH = "0x" + "77" * 20


def served_pair(tokens=(5, 6, 7), price=10, continued_from=0, **result_changes):
    job = dataclasses.replace(make_job(max_tokens=8), max_price=price)
    job_bytes = wire.sign(job, CLIENT)
    result = make_result(job_id=wire.decode(job_bytes).digest, tokens=tokens)
    result = dataclasses.replace(result, worker=WORKER_PEER, continued_from=continued_from, **result_changes)
    return job_bytes, wire.sign(result, WORKER)


def staked(pk: bytes):
    return WORKER_ETH if pk == bytes(WORKER.verify_key) else None


def test_a_signed_job_and_result_back_a_charge_of_tokens_times_price():
    served = verify_served_job(*served_pair(price=10), staked)
    assert (served.worker, served.tokens, served.charge) == (WORKER_ETH, 3, 30)


def test_a_continuation_is_paid_only_for_the_tokens_it_generated():
    assert verify_served_job(*served_pair(continued_from=2), staked).tokens == 1


@pytest.mark.parametrize("tamper, match", [
    (lambda job, result: (job, wire.sign(wire.decode(result).message, SigningKey(b"x" * 32))), "not signed by"),
    (lambda job, result: (wire.sign(dataclasses.replace(wire.decode(job).message, nonce=1), CLIENT), result),
     "another job"),
    (lambda job, result: (job, result[:-1] + bytes([result[-1] ^ 1])), "invalid envelope"),
])
def test_unverifiable_charges_are_refused(tamper, match):
    with pytest.raises(SettlementError, match=match):
        verify_served_job(*tamper(*served_pair()), staked)


def test_an_unstaked_worker_earns_nothing():
    with pytest.raises(SettlementError, match="no stake"):
        verify_served_job(*served_pair(), lambda pk: None)


jobs = st.lists(st.builds(ServedJob, job_id=st.sampled_from([f"{i:064x}" for i in range(12)]),
                          client=st.sampled_from(["0x" + "a1" * 20, "0x" + "a2" * 20]),
                          worker=st.sampled_from(["0x" + "b1" * 20, "0x" + "b2" * 20, "0x" + "b3" * 20]),
                          tokens=st.integers(0, 100), price=st.integers(0, 10**6)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(jobs, st.integers(0, 10**8), st.integers(0, 10_000), st.dictionaries(
    st.sampled_from(["0x" + "b1" * 20, "0x" + "b9" * 20]), st.integers(0, 10**9)))
def test_settlement_never_overcharges_and_rewards_add_up(served, deposit, fee_bps, previous):
    available = {"0x" + "a1" * 20: deposit, "0x" + "a2" * 20: deposit // 2}
    s = build_settlement(7, served, previous=previous, fee_bps=fee_bps, available=available)
    assert all(s.charges[c] <= available[c] for c in s.charges)
    assert s.rewards_added <= s.income
    assert len({j.job_id for j in s.jobs}) == len(s.jobs)
    for account, total in s.cumulative.items():
        assert total == previous.get(account, 0) + s.rewards.get(account, 0)
        if total:
            assert verify(s.tree.root, account, total, s.tree.proofs[account])
    assert s.tree.root == build_tree(s.cumulative).root


def test_a_result_signed_after_its_job_expired_is_not_paid():
    """The job's beacon is the first block after expiry: a worker signing later could have seen it."""
    job = make_job(max_tokens=8)
    job_bytes = wire.sign(job, CLIENT)
    result = dataclasses.replace(make_result(job_id=wire.decode(job_bytes).digest), worker=WORKER_PEER)
    for signed_at, paid in ((job.expires_at - 1, True), (job.expires_at, False), (job.expires_at + 1000, False)):
        result_bytes = wire.sign(dataclasses.replace(result, signed_at=signed_at), WORKER)
        if paid:
            assert verify_served_job(job_bytes, result_bytes, staked).tokens == 3
        else:
            with pytest.raises(SettlementError, match="signed after the job expired"):
                verify_served_job(job_bytes, result_bytes, staked)


def test_a_settlement_slashing_one_worker_for_two_lies_names_evidence_anyone_can_fetch():
    """Seen in CI: two lies of one cheater convicted in one settlement put sha256 of both evidence
    hashes on chain, a hash no node holds evidence under, so `inferad evidence HASH` failed."""
    from types import SimpleNamespace

    from inferad.oracle import Verdicts, _evidence_root

    key, liar = b"k" * 32, "0x" + "ab" * 20
    view = SimpleNamespace(address_of_key=lambda k: liar if k == key else None, stakes={liar: (key, 2 * 10**18)})
    config = SimpleNamespace(slash_bps=5000, bounty_bps=1000)
    oracle = SimpleNamespace(billing=SimpleNamespace(view=view), config=config)
    verdicts = Verdicts()
    verdicts.slash(oracle, key, (), "job-1", "11" * 32)
    verdicts.slash(oracle, key, (), "job-2", "22" * 32)
    assert verdicts.slashes == {liar: 10**18} and set(verdicts.evidence) == {"job-1", "job-2"}
    assert _evidence_root(sorted(verdicts.behind.values())).hex() == "11" * 32  # evidence the oracle stored
