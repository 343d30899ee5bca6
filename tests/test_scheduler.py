"""The flow harmonizer's rules, as properties and a simulated run."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.peers import Backoff, PeerTable
from scheduler.ranking import Candidate, JobShape, rank_candidates, score

JOB = JobShape(prompt_tokens=20, max_tokens=64)

candidates = st.builds(
    Candidate,
    peer_id=st.text("abcdefgh", min_size=4, max_size=8),
    tokens_per_s=st.floats(0.5, 500),
    n_ctx=st.sampled_from([32, 128, 2048]),
    queued=st.integers(0, 5),
    running=st.integers(0, 1),
    capacity=st.integers(1, 8),
    rtt_s=st.floats(0, 0.5),
    reputation=st.floats(0, 1),
)


def unique(cands):
    return list({c.peer_id: c for c in cands}.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(candidates, max_size=12), st.sets(st.text("abcdefgh", min_size=4, max_size=8)),
       st.floats(0, 0.6), st.integers(0, 2**32))
def test_never_picks_an_excluded_peer_while_an_eligible_one_exists(cands, backed_off, floor, seed):
    cands = unique(cands)
    plan = rank_candidates(JOB, cands, rng=random.Random(seed), backed_off=backed_off, reputation_floor=floor)
    assert set(plan.order).isdisjoint(plan.excluded)
    assert set(plan.order) | set(plan.excluded) == {c.peer_id for c in cands}
    for c in cands:
        if c.peer_id in plan.order:
            assert c.peer_id not in backed_off and c.reputation >= floor
            assert JOB.prompt_tokens + JOB.max_tokens <= c.n_ctx
            assert c.queued + c.running < c.capacity


@settings(max_examples=200, deadline=None)
@given(st.lists(candidates, max_size=12), st.integers(0, 2**32))
def test_ranking_is_deterministic_for_a_seed(cands, seed):
    cands = unique(cands)
    first = rank_candidates(JOB, cands, rng=random.Random(seed))
    assert rank_candidates(JOB, cands, rng=random.Random(seed)) == first


@settings(max_examples=200, deadline=None)
@given(st.lists(candidates, min_size=2, max_size=12), st.integers(0, 2**32))
def test_failover_order_after_the_first_choice_is_by_score(cands, seed):
    cands = unique(cands)
    plan = rank_candidates(JOB, cands, rng=random.Random(seed))
    by_id = {c.peer_id: c for c in cands}
    rest = [score(by_id[p], JOB) for p in plan.order[1:]]
    assert rest == sorted(rest)


def test_no_eligible_worker_explains_every_exclusion():
    plan = rank_candidates(JOB, [Candidate("tiny", 10, n_ctx=32), Candidate("full", 10, 2048, queued=1)],
                           rng=random.Random(1))
    assert plan.order == ()
    assert "context 32 too small" in plan.explain() and "at capacity" in plan.explain()


def test_reputation_makes_an_equal_peer_preferred():
    good, bad = Candidate("good", 50, 2048, reputation=0.9), Candidate("bad", 50, 2048, reputation=0.1)
    assert score(good, JOB) < score(bad, JOB)


def jain(xs):
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def simulate(speeds, jobs=3000, load=0.9, seed=7):
    """One gateway, FIFO workers; the gateway sees true queue lengths. Returns jobs per worker."""
    rng = random.Random(seed)
    busy_until = [0.0] * len(speeds)
    queues: list[list[float]] = [[] for _ in speeds]  # finish times of jobs assigned
    served = [0] * len(speeds)
    interval = JOB.max_tokens / sum(speeds) / load
    now = 0.0
    for _ in range(jobs):
        now += rng.expovariate(1 / interval)
        for q in queues:
            q[:] = [t for t in q if t > now]
        cands = [Candidate(str(i), s, 4096, queued=max(len(queues[i]) - 1, 0), running=min(len(queues[i]), 1),
                           capacity=10_000) for i, s in enumerate(speeds)]
        pick = int(rank_candidates(JOB, cands, rng=rng).order[0])
        start = max(now, busy_until[pick])
        busy_until[pick] = start + JOB.max_tokens / speeds[pick]
        queues[pick].append(busy_until[pick])
        served[pick] += 1
    return served


def test_identical_workers_share_the_load_fairly():
    served = simulate([40.0] * 8)
    assert jain(served) >= 0.9, served


def test_faster_workers_get_proportionally_more():
    speeds = [10.0, 20.0, 40.0, 80.0]
    served = simulate(speeds)
    assert served == sorted(served), served
    assert jain([n / s for n, s in zip(served, speeds, strict=True)]) >= 0.9, served


def test_peer_table_keeps_newest_advert_and_expires_after_three_periods():
    class Ad:
        def __init__(self, peer_id, seq):
            self.peer_id, self.seq, self.interval = peer_id, seq, 2

    table = PeerTable()
    assert table.update(Ad("p", 2), now=0)
    assert not table.update(Ad("p", 1), now=1)  # replayed older advert
    assert table.get("p").advert.seq == 2
    assert table.expire(now=6) == []
    assert table.expire(now=6.1) == ["p"] and len(table) == 0


def test_backoff_doubles_and_resets_on_success():
    backoff = Backoff(base_s=15)
    assert backoff.failed("p", now=0) == 15
    assert backoff.failed("p", now=15) == 30
    assert backoff.active(now=44) == {"p"} and backoff.active(now=46) == set()
    backoff.succeeded("p")
    assert backoff.failed("p", now=100) == 15


@settings(max_examples=100, deadline=None)
@given(st.integers(40, 300), st.integers(0, 5), st.integers(0, 2**32))
def test_sampling_never_misses_the_few_eligible_peers_of_a_large_network(n, eligible_count, seed):
    rng = random.Random(seed)
    eligible = set(rng.sample(range(n), min(eligible_count, n)))
    cands = [Candidate(f"p{i:04d}", 10, 2048, queued=0 if i in eligible else 1, capacity=1) for i in range(n)]
    plan = rank_candidates(JOB, cands, rng=rng)
    chosen = {int(p[1:]) for p in plan.order}
    assert chosen <= eligible and bool(chosen) == bool(eligible)
    assert set(plan.order).isdisjoint(plan.excluded)


def test_sampled_decisions_still_spread_load_over_many_workers():
    served = simulate([40.0] * 60, jobs=6000)
    assert jain(served) >= 0.9


def test_a_worker_claiming_more_than_one_and_a_half_times_what_it_streamed_is_ranked_by_the_measurement():
    from scheduler.speeds import SpeedChecks

    speeds = SpeedChecks()
    assert speeds.speed("liar", 10_000.0) == 10_000.0  # nothing measured: its word
    assert speeds.observe("liar", claimed=10_000.0, tokens=40, seconds=1.0)  # 40 tok/s streamed
    assert speeds.speed("liar", 10_000.0) == pytest.approx(40.0)
    assert speeds.view("liar") == {"measured_tokens_per_s": 40.0, "claim_ratio": 250.0, "ranked_by_measurement": True,
                                   "overclaims": 1}


def test_an_honest_worker_within_the_tolerance_keeps_its_advertised_speed():
    from scheduler.speeds import SpeedChecks

    speeds = SpeedChecks()
    assert not speeds.observe("honest", claimed=45.0, tokens=40, seconds=1.0)  # 1.125x: batching, network
    assert speeds.speed("honest", 45.0) == 45.0 and speeds.view("honest")["overclaims"] == 0
    assert not speeds.observe("honest", claimed=45.0, tokens=4, seconds=1.0)  # too short to say anything


def test_a_busy_worker_is_held_to_its_delivered_speed_shared_by_its_running_jobs():
    from scheduler.speeds import claimed_stream_speed

    assert claimed_stream_speed(45.0, running=0, delivered_tokens_per_s=0.0) == 45.0
    assert claimed_stream_speed(45.0, running=8, delivered_tokens_per_s=160.0) == 20.0
