"""Which finished jobs are verified, and by whom (DESIGN §7), as pure functions.

``d = sha256("verify" | job_id | result_hash | beacon)`` where the beacon is a
value the worker cannot know when it signs its result (the hash of a chain
block after the result was stored).  A job is verified iff
``d < p(worker) * 2**256``, and its verifiers are the first ``k`` peers in the
rendezvous order of ``d`` over the staked providers of the model, excluding
the worker, the gateway and the client.  Anyone holding the job, the result
and the block hash recomputes the same draw, so nobody can choose it: the
worker would have to change its result after seeing the beacon, which
changes ``d``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

SPACE = 1 << 256


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


def draw_verifiers(d: int, providers: Iterable[str], *, worker: str, gateway: str, client: str) -> list[str]:
    """All eligible verifiers in rendezvous order: the first k are asked, the next
    replace any that does not answer in time.  The parties to the job never verify it."""
    return [p for p in rendezvous_order(d, providers) if p not in {worker, gateway, client}]
