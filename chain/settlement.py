"""What an epoch's settlement pays and charges, from signed evidence (pure).

Every charge must be backed by a client-signed job and the worker-signed
result of that job: the oracle recomputes the charge (tokens generated x the
price the client signed) and drops anything it cannot verify.  Rewards are
kept as cumulative totals per account, so the Merkle root of one epoch lets
a worker claim everything it earned so far in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from chain.merkle import RewardsTree, build_tree
from p2p import wire

BPS = 10_000


class SettlementError(Exception):
    """A reported job that cannot be charged; the message says why (it is logged and dropped)."""


@dataclass(frozen=True)
class ServedJob:
    job_id: str
    client: str  # Ethereum address the client signed into the job
    worker: str  # Ethereum address staked for the worker's Ed25519 key
    tokens: int  # tokens this worker generated (a continuation's prefix is not its work)
    price: int  # wei per token, as signed by the client

    @property
    def charge(self) -> int:
        return self.tokens * self.price


def verify_served_job(job: bytes, result: bytes, worker_address_of: Callable[[bytes], str | None]) -> ServedJob:
    """Check a (client-signed job, worker-signed result) pair; the charge it backs."""
    try:
        job_env, result_env = wire.decode(job), wire.decode(result)
    except wire.WireError as exc:
        raise SettlementError(f"invalid envelope: {exc}") from None
    if job_env.type != "job" or result_env.type != "result":
        raise SettlementError("expected a job and its result")
    request: wire.JobRequest = job_env.message
    outcome: wire.JobResult = result_env.message
    if outcome.job_id != job_env.digest:
        raise SettlementError("the result is for another job")
    if outcome.model.sha256 != request.model.sha256:
        raise SettlementError("the result is for another model")
    if outcome.worker != result_env.signer_peer_id:
        raise SettlementError("the result is not signed by the worker it names")
    if outcome.signed_at >= request.expires_at:  # the worker could have seen the job's beacon
        raise SettlementError("the result was signed after the job expired")
    worker = worker_address_of(result_env.signer)
    if worker is None:
        raise SettlementError(f"worker {outcome.worker} has no stake bound to its key")
    tokens = len(outcome.output_tokens) - outcome.continued_from
    if tokens > request.params.max_tokens:
        raise SettlementError("more tokens than the client allowed")
    return ServedJob(job_id=job_env.digest, client=request.client_eth, worker=worker, tokens=tokens,
                     price=request.max_price)


@dataclass(frozen=True)
class EpochSettlement:
    epoch: int
    charges: dict[str, int]  # client -> wei charged this epoch
    rewards: dict[str, int]  # account -> wei earned this epoch
    cumulative: dict[str, int]  # account -> wei earned in all settled epochs, this one included
    tree: RewardsTree
    jobs: list[ServedJob] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # why jobs were not charged

    @property
    def rewards_added(self) -> int:
        return sum(self.rewards.values())

    @property
    def income(self) -> int:
        return sum(self.charges.values())


def build_settlement(epoch: int, jobs: Iterable[ServedJob], *, previous: dict[str, int], fee_bps: int,
                     available: dict[str, int], bounties: dict[str, int] | None = None) -> EpochSettlement:
    """Charges per client (never above what it has on deposit), rewards per worker
    (the charge less the protocol fee) plus verifiers' bounties (paid from this
    settlement's slashes), and the new cumulative rewards tree."""
    seen: set[str] = set()
    spent: dict[str, int] = {}
    kept: list[ServedJob] = []
    dropped: list[str] = []
    for job in sorted(jobs, key=lambda j: j.job_id):
        if job.job_id in seen:
            dropped.append(f"{job.job_id[:16]}: reported twice")
            continue
        seen.add(job.job_id)
        if spent.get(job.client, 0) + job.charge > available.get(job.client, 0):
            dropped.append(f"{job.job_id[:16]}: client {job.client} cannot cover {job.charge} wei")
            continue
        spent[job.client] = spent.get(job.client, 0) + job.charge
        kept.append(job)
    rewards: dict[str, int] = dict(bounties or {})
    for job in kept:
        rewards[job.worker] = rewards.get(job.worker, 0) + job.charge - job.charge * fee_bps // BPS
    cumulative = dict(previous)
    for account, amount in rewards.items():
        cumulative[account] = cumulative.get(account, 0) + amount
    charges = {client: wei for client, wei in spent.items() if wei}
    return EpochSettlement(epoch=epoch, charges=charges, rewards=rewards, cumulative=cumulative,
                           tree=build_tree(cumulative), jobs=kept, dropped=dropped)


# (job, result, attestation) -> whether the attestation may count: its beacon is the job's
# first block at or after expiry, and its signer is among the verifiers the draw names there
# (proofs.draw.named_verifiers over the keys staked at that block).  Needs the chain: the
# node's verification role provides it.
Eligible = Callable[[wire.Envelope, wire.Envelope, wire.Envelope], bool]


@dataclass(frozen=True)
class ProvenLie:
    job_id: str
    worker_key: bytes  # Ed25519 key that signed the false result
    verifier_keys: tuple[bytes, ...]  # the quorum that proved it


@dataclass(frozen=True)
class FalseAccusation:
    job_id: str
    accuser_keys: tuple[bytes, ...]  # named verifiers who said invalid
    witness_keys: tuple[bytes, ...]  # the oracle and the named verifiers who re-scored it valid


@dataclass(frozen=True)
class _Opened:
    digest: str
    job: wire.Envelope
    result: wire.Envelope
    attestations: list[wire.Envelope]


def _open(data: bytes) -> _Opened:
    try:
        evidence = wire.decode(data)
        if evidence.type != "evidence":
            raise SettlementError(f"expected evidence, got a {evidence.type}")
        job_env, result_env = wire.decode(evidence.message.job), wire.decode(evidence.message.result)
        attestations = [wire.decode(a) for a in evidence.message.attestations]
    except wire.WireError as exc:
        raise SettlementError(f"invalid evidence: {exc}") from None
    if job_env.type != "job" or result_env.type != "result" or result_env.message.job_id != job_env.digest:
        raise SettlementError("evidence must hold a job and that job's result")
    return _Opened(evidence.digest, job_env, result_env, attestations)


def _verdicts(opened: _Opened, verdict: str, eligible: Eligible) -> set[bytes]:
    """Signers of attestations with ``verdict`` about this very result that ``eligible`` lets count."""
    result = opened.result
    return {att.signer for att in opened.attestations
            if att.type == "attestation" and att.message.verdict == verdict
            and att.message.job_id == opened.job.digest and att.message.result_hash == result.digest
            and att.message.worker == result.signer_peer_id and att.signer != result.signer
            and eligible(opened.job, result, att)}


def verify_evidence(data: bytes, *, quorum: int, eligible: Eligible) -> ProvenLie:
    """Check evidence of a lie: a client-signed job, the worker-signed result of it, and
    ``quorum`` distinct named verifiers (not the worker) attesting ``invalid`` for that very
    result at the job's beacon.  Raises SettlementError otherwise."""
    opened = _open(data)
    voters = _verdicts(opened, "invalid", eligible)
    if len(voters) < quorum:
        raise SettlementError(f"{len(voters)} distinct invalid attestation(s) by named verifiers for this "
                              f"result; {quorum} needed")
    return ProvenLie(job_id=opened.job.digest, worker_key=opened.result.signer, verifier_keys=tuple(sorted(voters)))


def verify_false_accusation(data: bytes, *, arbiter_key: bytes, eligible: Eligible) -> FalseAccusation:
    """Check evidence of a false accusation: named verifiers attested ``invalid`` for a result that
    both the oracle (``arbiter_key``, re-scoring on its own copy of the model) and another named
    verifier attested ``valid``.  A false accusation costs what a false result costs.  Raises
    SettlementError otherwise."""
    opened = _open(data)
    arbiter = {att.signer for att in opened.attestations
               if att.signer == arbiter_key and att.type == "attestation" and att.message.verdict == "valid"
               and att.message.job_id == opened.job.digest and att.message.result_hash == opened.result.digest}
    if not arbiter:
        raise SettlementError("no valid re-score by the oracle in this evidence")
    witnesses = _verdicts(opened, "valid", eligible) - {arbiter_key}
    if not witnesses:
        raise SettlementError("no named verifier besides the oracle attested the result valid")
    accusers = _verdicts(opened, "invalid", eligible) - {arbiter_key}
    if not accusers:
        raise SettlementError("no named verifier attested the result invalid")
    return FalseAccusation(job_id=opened.job.digest, accuser_keys=tuple(sorted(accusers)),
                           witness_keys=tuple(sorted(witnesses | arbiter)))
