"""The replayable sampler (proofs.sampler): numbers only, no model."""

import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from proofs.sampler import DRAW_DOMAIN, draw, interval, sample

JOB = "ab" * 32


def test_the_draw_is_the_documented_hash_of_job_seed_choice_and_position():
    digest = hashlib.sha256(DRAW_DOMAIN + bytes.fromhex(JOB) + (7).to_bytes(4, "big") + (1).to_bytes(2, "big")
                            + (3).to_bytes(4, "big")).digest()
    assert draw(JOB, 7, 1, 3) == (int.from_bytes(digest[:8], "big") >> 11) / 2**53
    assert len({draw(JOB, 7, c, i) for c in range(2) for i in range(50)}) == 100
    assert all(0.0 <= draw(JOB, 0, 0, i) < 1.0 for i in range(1000))


def brute_force(logits, temperature, top_k=0, top_p=1.0, allowed=None):
    """The sampler's distribution written out the slow way: (ids in id order, probabilities)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    ids = [i for i in range(len(z)) if allowed is None or allowed[i]]
    ids.sort(key=lambda i: (-z[i], i))  # canonical order decides what top-k and top-p keep
    if top_k:
        ids = ids[:top_k]
    p = np.exp(z[ids] - z[ids].max())
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1
        ids, p = ids[:keep], p[:keep] / p[:keep].sum()
    order = np.argsort(ids)  # the intervals follow token ids
    return [ids[i] for i in order], p[order]


def token_at(ids, p, u):
    cumulative = np.cumsum(p)
    return ids[min(int(np.searchsorted(cumulative, u, side="right")), len(ids) - 1)]


logit_rows = st.lists(st.floats(-12, 12, allow_nan=False, width=32), min_size=2, max_size=300)


@settings(max_examples=300, deadline=None)
@given(logit_rows, st.floats(0.0, 0.999999), st.sampled_from([0.3, 0.7, 1.0, 1.5]), st.sampled_from([0, 1, 5, 40]),
       st.sampled_from([1.0, 0.95, 0.5]))
def test_the_sampler_picks_the_token_whose_interval_holds_the_draw(row, u, temperature, top_k, top_p):
    logits = np.array(row, dtype=np.float32)
    ids, p = brute_force(logits, temperature, top_k, top_p)
    token = sample(logits, u, temperature=temperature, top_k=top_k, top_p=top_p)
    share = interval(logits, token, temperature=temperature, top_k=top_k, top_p=top_p)
    assert share.kept and share.lo - 1e-9 <= u < share.hi + 1e-9
    cumulative = np.cumsum(p)
    kept = np.cumsum(np.sort(brute_force(logits, temperature, top_k)[1])[::-1])  # canonical prefixes' mass
    at_nucleus_end = top_p < 1.0 and bool(np.any(np.abs(kept - top_p) < 1e-9))  # float rounding decides
    if not any(abs(u - c) < 1e-6 for c in cumulative) and not at_nucleus_end:  # else the slow way agrees
        assert token == token_at(ids, p, u)


def test_tokens_own_consecutive_intervals_in_id_order_as_wide_as_their_probabilities():
    logits = np.array([1.0, 3.0, 3.0, 0.0], dtype=np.float32)
    shares = [interval(logits, t, temperature=1.0) for t in range(4)]
    p = np.exp(logits - 3.0) / np.exp(logits - 3.0).sum()
    assert shares[0].lo == 0.0 and abs(shares[3].hi - 1.0) < 1e-9
    assert all(abs(shares[t].hi - shares[t + 1].lo) < 1e-12 for t in range(3))
    assert all(abs((s.hi - s.lo) - q) < 1e-7 for s, q in zip(shares, p, strict=True))


def test_min_p_keeps_the_tokens_at_least_that_fraction_as_likely_as_the_best():
    logits = np.log(np.array([0.5, 0.3, 0.12, 0.08], dtype=np.float32))  # p at temperature 1
    assert [interval(logits, t, temperature=1.0, min_p=0.2).kept for t in range(4)] == [True, True, True, False]
    shares = [interval(logits, t, temperature=1.0, min_p=0.2) for t in range(3)]
    assert abs(shares[2].hi - 1.0) < 1e-6 and abs((shares[0].hi - shares[0].lo) - 0.5 / 0.92) < 1e-6
    assert all(sample(logits, u, temperature=1.0, min_p=0.2) != 3 for u in np.linspace(0, 0.999, 200))
    # a verifier keeps a token float noise may have put just under the cut, as stretched
    edge = interval(logits, 3, temperature=1.0, min_p=0.2, slack=0.06, u=0.99)
    assert edge.kept and edge.stretched


def test_top_p_keeps_the_canonical_prefix_ties_going_to_the_lower_id():
    logits = np.array([1.0, 3.0, 3.0, 0.0], dtype=np.float32)  # 1 and 2 tie at 0.42 each
    assert interval(logits, 1, temperature=1.0, top_p=0.3).kept
    assert not interval(logits, 2, temperature=1.0, top_p=0.3).kept


def test_a_token_outside_top_k_or_top_p_or_forbidden_is_not_kept():
    logits = np.array([5.0, 4.0, 0.0, -3.0], dtype=np.float32)
    assert not interval(logits, 2, temperature=1.0, top_k=2).kept
    assert not interval(logits, 3, temperature=1.0, top_p=0.9).kept
    allowed = np.array([False, True, True, True])
    assert not interval(logits, 0, temperature=1.0, allowed=allowed).kept
    assert sample(logits, 0.0, temperature=1.0, allowed=allowed) == 1


def test_a_large_vocabulary_with_the_draw_deep_in_the_tail_is_still_exact():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, 262_144).astype(np.float32)
    for u in (0.0, 0.5, 0.999, 0.9999999):
        token = sample(logits, u, temperature=1.5)
        share = interval(logits, token, temperature=1.5)
        assert share.lo <= u < share.hi, (u, share)


def test_a_verifier_tolerates_float_noise_at_the_nucleus_and_top_k_edges_as_stretched():
    logits = np.array([2.0, 1.0, 1.0, -1.0], dtype=np.float32)
    p = np.exp(logits - 2.0) / np.exp(logits - 2.0).sum()
    top_p = float(p[0] + p[1]) - 1e-4  # the worker's nucleus ended at token 1; noise left token 2 just out
    assert not interval(logits, 2, temperature=1.0, top_p=top_p).kept
    share = interval(logits, 2, temperature=1.0, top_p=top_p, slack=0.05, u=0.9)
    assert share.kept and share.stretched and share.hi > 0.9 - 0.05
    assert not interval(logits, 3, temperature=1.0, top_p=top_p, slack=0.05, u=0.99).kept  # far beyond
    near_kth = np.array([3.0, 2.0, 1.9, -5.0], dtype=np.float32)
    assert interval(near_kth, 2, temperature=1.0, top_k=2, slack=0.05).stretched
    assert not interval(near_kth, 3, temperature=1.0, top_k=2, slack=0.05).kept


def test_an_honest_draw_inside_the_nominal_nucleus_is_not_called_stretched():
    logits = np.array([2.0, 1.0, 1.0, -1.0], dtype=np.float32)
    token = sample(logits, 0.2, temperature=1.0, top_p=0.9)
    assert not interval(logits, token, temperature=1.0, top_p=0.9, slack=0.12, u=0.2).stretched


def test_a_claimed_token_just_past_the_nucleus_with_near_equal_neighbours_is_stretched_not_refused():
    # worker: [0.5, 0.3, 0.1, 0.1...]; the verifier's noise put token 3 ahead of token 2: top_p 0.9
    # then ends at token 3 by its view, although the worker's nucleus ended at token 2
    logits = np.log(np.array([0.5, 0.3, 0.099, 0.101], dtype=np.float32))
    assert not interval(logits, 2, temperature=1.0, top_p=0.85).kept
    share = interval(logits, 2, temperature=1.0, top_p=0.85, slack=0.06, u=0.9)
    assert share.kept and share.stretched


def test_another_token_that_noise_moved_across_the_min_p_cut_makes_the_draw_ambiguous_not_a_miss():
    # the worker: token 0 just under the cut (min_p 0.1 of the best, token 3), so token 5 owned
    # [0.667, 1); the verifier's noise lifts token 0 just over it, which moves token 5 to [0.688, 1)
    worker = np.log(np.array([0.099, 1e-9, 1e-9, 1.0, 1e-9, 0.5], dtype=np.float32))
    verifier = np.log(np.array([0.101, 1e-9, 1e-9, 1.0, 1e-9, 0.5], dtype=np.float32))
    u = 0.67
    assert sample(worker, u, temperature=1.0, min_p=0.1) == 5
    nominal = interval(verifier, 5, temperature=1.0, min_p=0.1)
    assert not nominal.lo <= u < nominal.hi
    share = interval(verifier, 5, temperature=1.0, min_p=0.1, slack=0.06, u=u)
    assert share.lo <= u < share.hi and share.stretched
    far = np.log(np.array([0.3, 1e-9, 1e-9, 1.0, 1e-9, 0.5], dtype=np.float32))  # token 0 clearly in
    assert interval(far, 5, temperature=1.0, min_p=0.1, slack=0.06, u=u) == interval(far, 5, temperature=1.0,
                                                                                        min_p=0.1)


def test_another_token_that_noise_moved_across_the_k_th_makes_the_draw_ambiguous_not_a_miss():
    # top_k 2: the worker kept tokens 3 and 5; the verifier's noise lifts token 0 to the k-th place
    worker = np.log(np.array([0.49, 1e-9, 1e-9, 1.0, 1e-9, 0.5], dtype=np.float32))
    verifier = np.log(np.array([0.51, 1e-9, 1e-9, 1.0, 1e-9, 0.5], dtype=np.float32))
    u = 0.7
    assert sample(worker, u, temperature=1.0, top_k=2) == 5
    assert interval(verifier, 5, temperature=1.0, top_k=2).kept is False
    share = interval(verifier, 5, temperature=1.0, top_k=2, slack=0.06, u=u)
    assert share.kept and share.lo <= u < share.hi and share.stretched
