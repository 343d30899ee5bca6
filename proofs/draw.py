"""Which finished jobs are verified, and by whom (DESIGN §7), as pure functions.

``d = sha256("verify" | job_id | result_hash | beacon)`` where the beacon is a
value the worker cannot know when it signs its result (the hash of the first
chain block at or after the job's expiry).  A job is verified iff
``d < p(worker) * 2**256``.  Its *named* verifiers are the first
``VERIFIERS + REPLACEMENTS`` keys of the rendezvous order of ``d`` over the
keys staked on chain at the beacon block, the worker excluded: the gateway
asks them in that order until ``VERIFIERS`` have answered (one that is the
gateway or the client, lacks the model or times out is skipped, which is what
the replacements are for).  Only a named verifier's attestation counts.
Anyone holding the job id, the result hash, the worker's key and the chain
recomputes the same list, so nobody can choose it: the worker would have to
change its result after seeing the beacon, which changes ``d``, and a staked
node outside the list cannot make its verdict count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPACE = 1 << 256
VERIFIERS = 2  # k: attestations a drawn job needs
# Output positions a verifier re-scores per choice: every one of a shorter output.  Each re-scored
# position costs a projection onto the vocabulary (262k rows for gemma), the bulk of re-scoring;
# 32 positions drawn after the fact catch a spoof that parts from the model at a share f of its
# positions as often as an output of 32 tokens checked whole does (docs/verification.md).
CHECKED_POSITIONS = 32
REPLACEMENTS = 3  # named verifiers beyond k, for those that cannot answer


def draw_value(job_id: str, result_hash: str, beacon: bytes) -> int:
    digest = hashlib.sha256(b"verify" + bytes.fromhex(job_id) + bytes.fromhex(result_hash) + beacon).digest()
    return int.from_bytes(digest, "big")


def is_drawn(d: int, probability: float) -> bool:
    """True iff the job with draw value ``d`` is verified at ``probability``."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"a probability is in [0, 1], got {probability}")
    return d < int(probability * SPACE)


def rendezvous_order(d: int, peers: Iterable[str]) -> list[str]:
    """Peers ranked by sha256(d | peer id): every node derives the same order, and
    adding or removing one peer moves no other peer relative to the rest."""
    key = d.to_bytes(32, "big")
    return sorted(set(peers), key=lambda peer: hashlib.sha256(key + peer.encode()).digest())


def named_verifiers(d: int, staked: Iterable[str], *, worker: str) -> list[str]:
    """The verifiers the draw names (the first ``VERIFIERS + REPLACEMENTS`` of the rendezvous
    order over the staked peers, the worker excluded): only their attestations count."""
    return [p for p in rendezvous_order(d, staked) if p != worker][:VERIFIERS + REPLACEMENTS]


def checked_positions(beacon: bytes, job_id: str, choice: int, n: int, k: int = CHECKED_POSITIONS) -> list[int]:
    """The output positions of ``choice`` (of ``n``) a verifier re-scores, ascending: all of them
    when ``n`` <= ``k``, else the ``k`` with the smallest ``sha256("positions" | beacon | job id |
    choice (u16) | position (u32))``.  The worker signed before the beacon existed, so it cannot
    know which positions will be looked at; every verifier looks at the same ones."""
    if n <= k:
        return list(range(n))
    prefix = b"positions" + beacon + bytes.fromhex(job_id) + choice.to_bytes(2, "big")
    ranked = sorted(range(n), key=lambda i: hashlib.sha256(prefix + i.to_bytes(4, "big")).digest())
    return sorted(ranked[:k])
