"""The verifier draw and reputation: properties nobody can steer."""

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from proofs.draw import REPLACEMENTS, SPACE, VERIFIERS, draw_value, is_drawn, named_verifiers, rendezvous_order
from proofs.reputation import Evidence, reputation, verify_probability

hexes = st.binary(min_size=32, max_size=32).map(bytes.hex)
peers = st.lists(st.text("abcdefghijk", min_size=3, max_size=6), min_size=0, max_size=30, unique=True)


@given(hexes, hexes, hexes, st.binary(min_size=32, max_size=32))
def test_changing_the_result_after_seeing_the_beacon_changes_the_draw(job_id, result, other, beacon):
    if result != other:
        assert draw_value(job_id, result, beacon) != draw_value(job_id, other, beacon)


@given(hexes, hexes, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_the_beacon_decides_the_draw_too(job_id, result, beacon, other):
    if beacon != other:
        assert draw_value(job_id, result, beacon) != draw_value(job_id, result, other)


@settings(max_examples=300)
@given(st.integers(0, SPACE - 1), peers)
def test_the_draw_names_a_bounded_list_of_staked_peers_and_never_the_worker(d, staked):
    worker = staked[0] if staked else "w"
    named = named_verifiers(d, staked, worker=worker)
    assert worker not in named and set(named) <= set(staked)
    assert len(named) == min(VERIFIERS + REPLACEMENTS, len(set(staked) - {worker}))
    assert named == [p for p in rendezvous_order(d, staked) if p != worker][:len(named)]


@given(st.integers(0, SPACE - 1), peers, st.text("xyz", min_size=1, max_size=3))
def test_staking_one_more_key_can_only_push_others_out_of_the_named_list(d, staked, newcomer):
    before = named_verifiers(d, staked, worker="w")
    after = named_verifiers(d, [*staked, newcomer], worker="w")
    assert [p for p in after if p != newcomer] == before[:len([p for p in after if p != newcomer])]


@given(st.integers(0, SPACE - 1), peers, st.text("xyz", min_size=1, max_size=3))
def test_rendezvous_order_is_stable_when_a_peer_leaves_or_joins(d, providers, newcomer):
    order = rendezvous_order(d, providers)
    with_newcomer = rendezvous_order(d, providers + [newcomer])
    assert [p for p in with_newcomer if p != newcomer] == order


def test_draw_is_anyones_to_recompute():
    job, result, beacon = "11" * 32, "22" * 32, hashlib.sha256(b"block").digest()
    assert draw_value(job, result, beacon) == draw_value(job, result, beacon)


def test_drawn_share_matches_the_probability():
    draws = [draw_value(f"{i:064x}", "33" * 32, b"beacon") for i in range(4000)]
    share = sum(is_drawn(d, 0.25) for d in draws) / len(draws)
    assert 0.22 < share < 0.28
    assert all(is_drawn(d, 1.0) for d in draws) and not any(is_drawn(d, 0.0) for d in draws)


def test_new_workers_are_always_checked_and_checks_thin_out_with_a_clean_record():
    assert verify_probability(Evidence()) == 1.0
    ps = [verify_probability(Evidence(valid=n)) for n in (0, 5, 20, 100, 1000)]
    assert ps == sorted(ps, reverse=True) and abs(ps[-1] - 0.05) < 1e-9
    assert verify_probability(Evidence(valid=1000, invalid=1)) == 1.0


@given(st.integers(0, 200), st.integers(0, 5), st.integers(0, 50), st.integers(0, 200))
def test_reputation_rewards_honesty_and_punishes_lies_harder(valid, invalid, failures, successes):
    e = Evidence(valid, invalid, failures, successes)
    r = reputation(e)
    assert 0 < r < 1
    assert reputation(e.add(valid=1)) > r
    assert reputation(e.add(invalid=1)) < reputation(e.add(failures=1)) < r


def test_one_proven_lie_outweighs_many_honest_jobs():
    honest = Evidence(valid=15)
    assert reputation(honest.add(invalid=1)) < reputation(Evidence())


def test_a_verifier_rescores_every_position_of_a_short_output_and_a_drawn_sample_of_a_long_one():
    from proofs.draw import CHECKED_POSITIONS, checked_positions

    assert checked_positions(b"\1" * 32, "ab" * 32, 0, 20) == list(range(20))
    sample = checked_positions(b"\1" * 32, "ab" * 32, 0, 256)
    assert len(sample) == CHECKED_POSITIONS == len(set(sample)) and sample == sorted(sample)
    assert all(0 <= i < 256 for i in sample)
    assert sample == checked_positions(b"\1" * 32, "ab" * 32, 0, 256)  # every verifier: the same positions
    assert sample != checked_positions(b"\2" * 32, "ab" * 32, 0, 256)  # the beacon decides them
    assert sample != checked_positions(b"\1" * 32, "ab" * 32, 1, 256)  # and each choice has its own
