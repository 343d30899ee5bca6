"""Reputation from signed attestations and availability (DESIGN §7), pure.

Every node computes a peer's reputation from the same signed evidence, so the
views converge.  It is the mean of a Beta distribution over "this worker's
results are honest": valid verdicts count for it, invalid ones count far more
against it (one proven lie outweighs many honest jobs), and failures (time-
outs, dropped jobs) count a little against availability.  The verification
probability follows: every job of a new worker is checked, fewer as its
record of valid verdicts grows, never fewer than the floor, and all again
after an invalid verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INVALID_WEIGHT = 20.0
FAILURE_WEIGHT = 0.5
PRIOR = 1.0  # Beta(1, 1): no evidence, reputation 0.5


@dataclass(frozen=True)
class Evidence:
    valid: int = 0  # attestations of valid results
    invalid: int = 0  # invalid verdicts confirmed by a quorum
    failures: int = 0  # timeouts and failed jobs
    successes: int = 0  # jobs delivered

    def add(self, *, valid: int = 0, invalid: int = 0, failures: int = 0, successes: int = 0) -> Evidence:
        return Evidence(self.valid + valid, self.invalid + invalid, self.failures + failures,
                        self.successes + successes)


def reputation(e: Evidence) -> float:
    """In (0, 1); 0.5 for a peer nobody has evidence about."""
    good = PRIOR + e.valid + FAILURE_WEIGHT * e.successes
    bad = PRIOR + INVALID_WEIGHT * e.invalid + FAILURE_WEIGHT * e.failures
    return good / (good + bad)


def verify_probability(e: Evidence, *, floor: float = 0.05, ramp: float = 10.0) -> float:
    """1 for a new worker (and after any invalid verdict), decaying toward ``floor``
    as valid verdicts accumulate (``ramp`` of them take it about 63 % of the way)."""
    if not 0.0 < floor <= 1.0:
        raise ValueError("the floor is a probability in (0, 1]")
    if e.invalid:
        return 1.0
    return floor + (1.0 - floor) * math.exp(-e.valid / ramp)


@dataclass(frozen=True)
class Vote:
    """One signed attestation that passed the draw check, reduced to what counting needs."""

    job_id: str
    result_hash: str
    worker: str
    verifier: str
    verdict: str  # "valid" | "invalid" | "inconclusive"
    beacon_block: int = 0


def _counted(votes: list[Vote], beacon_block: int | None) -> dict[str, str]:
    """verifier -> verdict, for votes at the job's beacon when it is known (holders of the job know it)."""
    return {v.verifier: v.verdict for v in votes
            if v.verifier != v.worker and (beacon_block is None or v.beacon_block == beacon_block)}


def job_outcome(votes: list[Vote], *, quorum: int = 2, arbiter: str | None = None,
                beacon_block: int | None = None) -> str:
    """``invalid`` once ``quorum`` distinct verifiers say so (one verifier cannot
    condemn a worker), ``valid`` when verifiers agree it is, ``disputed`` when
    they disagree short of a quorum, ``pending`` without a decisive vote.

    ``arbiter`` is the oracle's peer id: its ``valid`` (a re-score on its own copy of the
    model) acquits whatever the others said, so colluding verifiers cannot convict an
    honest worker.  It cannot convict alone: its ``invalid`` counts as one vote.
    """
    verdicts = _counted(votes, beacon_block)
    if arbiter is not None and verdicts.get(arbiter) == "valid":
        return "valid"
    invalid = sum(1 for x in verdicts.values() if x == "invalid")
    valid = sum(1 for x in verdicts.values() if x == "valid")
    if invalid >= quorum:
        return "invalid"
    if invalid:
        return "disputed"
    return "valid" if valid else "pending"


def false_accusers(votes: list[Vote], *, arbiter: str | None, beacon_block: int | None = None) -> list[str]:
    """Verifiers who said ``invalid`` about a result the arbiter re-scored ``valid``."""
    verdicts = _counted(votes, beacon_block)
    if arbiter is None or verdicts.get(arbiter) != "valid":
        return []
    return sorted(v for v, verdict in verdicts.items() if verdict == "invalid")


def evidence_by_worker(votes: list[Vote], *, quorum: int = 2, arbiter: str | None = None) -> dict[str, Evidence]:
    """Per peer: jobs attested valid and jobs proven invalid, from every vote seen; a false
    accusation (an ``invalid`` the arbiter overturned) counts against its verifier like a lie."""
    by_job: dict[tuple[str, str], list[Vote]] = {}
    for vote in votes:
        by_job.setdefault((vote.job_id, vote.result_hash), []).append(vote)
    found: dict[str, Evidence] = {}
    for job_votes in by_job.values():
        outcome = job_outcome(job_votes, quorum=quorum, arbiter=arbiter)
        worker = job_votes[0].worker
        if outcome in ("valid", "invalid"):
            found[worker] = found.get(worker, Evidence()).add(**{outcome: 1})
        for accuser in false_accusers(job_votes, arbiter=arbiter):
            found[accuser] = found.get(accuser, Evidence()).add(invalid=1)
    return found
