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


@dataclass(frozen=True)
class ProvenLie:
    job_id: str
    worker_key: bytes  # Ed25519 key that signed the false result
    verifier_keys: tuple[bytes, ...]  # the quorum that proved it


def verify_evidence(data: bytes, *, quorum: int) -> ProvenLie:
    """Check evidence by signatures alone: a client-signed job, the worker-signed
    result of it, and ``quorum`` distinct verifiers (not the worker) attesting
    ``invalid`` for that very result.  Raises SettlementError otherwise."""
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
    voters: set[bytes] = set()
    for att in attestations:
        a = att.message
        if (att.type == "attestation" and a.verdict == "invalid" and a.job_id == job_env.digest
                and a.result_hash == result_env.digest and a.worker == result_env.signer_peer_id
                and att.signer != result_env.signer):
            voters.add(att.signer)
    if len(voters) < quorum:
        raise SettlementError(f"{len(voters)} distinct invalid attestation(s) for this result; {quorum} needed")
    return ProvenLie(job_id=job_env.digest, worker_key=result_env.signer, verifier_keys=tuple(sorted(voters)))
