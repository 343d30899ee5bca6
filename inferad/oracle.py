"""Epoch settlement over the network: reports from nodes, the oracle's loop, reward proofs.

Every node answers ``/inferad/settlement/1.0.0``: a ``report_request`` signed
by the on-chain oracle's registered key gets the signed jobs and results the
node served in the asked epochs (prompts are not for anyone else); a
``proof_request`` from anyone gets the latest Merkle proof of an account's
cumulative rewards.

The oracle (a node started with ``--oracle``) settles every epoch that ended:
it collects reports, keeps only charges it can verify from the signatures
(``chain.settlement``), never pays a job twice, submits ``settle`` and keeps
the proofs.  If the chain is down it retries, and the next settlement covers
every epoch since the last one that landed, so nothing is lost and no epoch
is settled twice (the contract refuses, and the oracle reads ``lastEpoch``
first).

:class:`Reports` answers the settlement protocol on every node;
:class:`Oracle` runs only on the oracle's node.  Both are handed what they use.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import trio

from chain.errors import ChainError
from chain.settlement import (
    BPS,
    SettlementError,
    build_settlement,
    verify_evidence,
    verify_false_accusation,
    verify_served_job,
)
from chain.view import ChainView
from inferad.admission import JobRejected
from inferad.billing import Billing
from inferad.config import Config
from inferad.membership import Dialer
from inferad.store import AsyncStore
from inferad.verification import HELD, Verification
from p2p import wire
from p2p.streams import FramedStream, StreamClosed
from proofs.draw import draw_value, is_drawn
from scheduler.peers import PeerTable

log = logging.getLogger("inferad.oracle")
REPORT_PAGE_BYTES = 512 * 1024
GRACE_S = 3  # after an epoch ends, wait for jobs finishing right at its edge
PAY, DEFER = "pay", "defer"
PEERS_AT_START = 5  # advert periods the oracle waits, after it starts, for the peers it knew
DEFERRED = b"deferred/"  # store pairs: jobs whose draw or attestations may still come


def _evidence_root(hashes: list[str]) -> bytes:
    """The one evidence hash a settlement puts on chain, from the evidence behind each of its
    slashes (``Verdicts.behind``): with one slash that evidence's own hash, so ``inferad
    evidence HASH`` fetches it; for several, sha256 of their sorted hashes (the record lists
    every evidence)."""
    if not hashes:
        return b"\0" * 32
    if len(hashes) == 1:
        return bytes.fromhex(hashes[0])
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in hashes)).digest()


def report_pages(entries: list[tuple[bytes, bytes]], offset: int) -> tuple[list[wire.ServedEntry], int]:
    """One page of a report starting at ``offset``; the next offset (0: last page)."""
    page, size, i = [], 0, offset
    while i < len(entries) and (not page or size + len(entries[i][0]) + len(entries[i][1]) < REPORT_PAGE_BYTES):
        job, result = entries[i]
        page.append(wire.ServedEntry(job=job, result=result))
        size += len(job) + len(result)
        i += 1
    return page, (i if i < len(entries) else 0)


def amount_bytes(wei: int) -> bytes:
    return wei.to_bytes(32, "big")


def accused_mark(job_id: str, address: str | None) -> str:
    """The store's mark for an accuser slashed over job ``job_id`` (a lie's mark is the job id)."""
    return f"{job_id}/{address}"


class Verdicts:
    """What one settlement slashes and pays in bounties, and the evidence behind it."""

    def __init__(self) -> None:
        self.slashes: dict[str, int] = {}  # address -> wei
        self.bounties: dict[str, int] = {}  # address -> wei
        self.evidence: dict[str, str] = {}  # job id -> evidence hash, every lie convicted
        self.behind: dict[str, str] = {}  # slashed address -> the evidence hash of its first lie here
        self.convicted: set[str] = set()  # store marks: a lie's job id, a false accuser's "job id/address"

    def slash(self, oracle: Oracle, liar_key: bytes, proven_by: tuple[bytes, ...], job_id: str, evidence_hash: str,
              *, accuser: bool = False) -> None:
        """Slash the account staked for ``liar_key`` (once per settlement), bounties to ``proven_by``:
        for a false result of job ``job_id``, or (``accuser``) for falsely accusing its worker."""
        view, config = oracle.billing.view, oracle.config
        liar = view.address_of_key(liar_key)
        if liar is None:
            log.warning("job %s: the liar has no stake left to slash", job_id[:16])
            return
        self.evidence[job_id] = evidence_hash
        self.convicted.add(accused_mark(job_id, liar) if accuser else job_id)
        if liar in self.slashes:  # one slash per account and settlement, whatever the count of lies
            return
        self.slashes[liar] = view.stakes[liar][1] * config.slash_bps // BPS
        self.behind[liar] = evidence_hash
        payees = [a for a in map(view.address_of_key, proven_by) if a is not None]
        for payee in payees:
            share = self.slashes[liar] * config.bounty_bps // BPS // len(payees)
            self.bounties[payee] = self.bounties.get(payee, 0) + share
        log.warning("slashing %s by %d wei for a %s (evidence %s)", liar, self.slashes[liar],
                    "false accusation" if accuser else "false result", evidence_hash[:16])


@dataclass(kw_only=True, eq=False)
class Oracle:
    """The settlement loop of the node that holds the oracle's Ethereum key.

    Args:   key: this node's signing key (the oracle's registered node key).
            config: quorum, slash and bounty shares, the attestation window, the advert interval.
            registry: the contract, sending as the oracle account.
            billing: the chain view, its refresh, the epoch length.
            verification: attestations, outcomes, evidence, and re-scoring as the arbiter.
            store: settlements, deferred jobs, slashes and evidence are kept here.
            peers: the advert table (whom to ask for reports).
            served: the engines the oracle re-scores on, by ``wire.served_key``.
            dialer: requests to peers.
    """

    key: Any
    config: Config
    registry: Any
    billing: Billing
    verification: Verification
    store: AsyncStore
    peers: PeerTable
    served: dict[str, Any]
    dialer: Dialer

    def __post_init__(self) -> None:
        self.peer_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))
        self.limiter = trio.CapacityLimiter(1)  # one sender: nonces in order
        self._unpunished: set[str] = set()  # false accusations without a second witness, logged once

    async def run(self) -> None:
        """Settle every epoch that ended, until cancelled; chain outages and bugs are logged
        and retried (at the latest the next epoch), so the node keeps serving."""
        while True:
            try:
                oracle = await trio.to_thread.run_sync(self.registry.value, "oracle")
                break
            except ChainError as exc:  # the chain is down: jobs go on, settlement waits
                log.warning("oracle waiting for the chain: %s", exc)
                await trio.sleep(5)
        if oracle != self.registry.account.address:
            log.error("this node's account %s is not the contract's oracle (%s): not settling",
                      self.registry.account.address, oracle)
            return
        length = self.billing.chain.epoch_seconds
        await self._hear_known_peers()
        log.info("oracle: settling every %d s epoch", length)
        while True:
            ended = int(time.time()) // length - 1  # the last epoch that is over
            wait = (ended + 2) * length + GRACE_S - time.time()
            try:
                await self.settle_through(ended)
            except (ChainError, OSError) as exc:
                log.warning("settlement of epochs up to %d postponed: %s", ended, exc)
                wait = min(wait, 5)
            except Exception:  # a bug: say so loudly, keep the node serving, try again next epoch
                log.exception("settlement of epochs up to %d failed", ended)
            await trio.sleep(max(wait, 1))

    async def _hear_known_peers(self) -> None:
        """Wait (at most ``PEERS_AT_START`` advert periods) until the peers this node knew before
        it started advertise again.  Reports come from the peers the oracle sees, and an epoch is
        asked for once: settled before its workers are heard again (right after a restart), their
        jobs in it would never be charged nor paid."""
        known = set(await self.store.remembered_peers()) - {self.peer_id}
        with trio.move_on_after(PEERS_AT_START * self.config.advert_interval):
            while known - {entry.peer_id for entry in self.peers.fresh(time.monotonic())}:
                await trio.sleep(0.5)

    async def settle_through(self, epoch: int) -> None:
        """Settle the epochs after the chain's ``lastEpoch`` up to ``epoch`` in one transaction.
        Raises ChainError or OSError when the chain cannot be read or written."""
        store, view = self.store, self.billing.view
        last = await trio.to_thread.run_sync(self.registry.value, "lastEpoch", limiter=self.limiter)
        # A settlement is recorded before its transaction is sent (so a crash between the two
        # cannot pay its jobs again); one the chain never booked is forgotten here.
        if await store.drop_settlements_after(last):
            log.warning("forgot a settlement recorded after epoch %d that never reached the chain", last)
        if epoch <= last:
            return
        entries = await self.collect(last, epoch) + await store.pairs(DEFERRED)
        await self.billing.refresh()
        signers = {wire.decode(result).signer for _, result in entries}
        await trio.to_thread.run_sync(view.learn_keys, signers)
        await self.catch_up_attestations([j for j, _ in entries])
        verdicts = await self.convictions({wire.decode(j).digest: (j, r) for j, r in entries})
        slashes, bounties, evidence = verdicts.slashes, verdicts.bounties, verdicts.evidence
        jobs, dropped, deferred = [], [], {}
        for job, result in {wire.decode(j).digest: (j, r) for j, r in entries}.values():
            try:
                served = verify_served_job(job, result, view.address_of_key)
            except SettlementError as exc:
                dropped.append(str(exc))
                continue
            if await store.is_settled(served.job_id):
                continue
            if served.worker in slashes:  # a proven liar is paid nothing this settlement
                verdict = f"worker {served.worker} is slashed in this settlement"
            else:
                verdict = await self.verified(job, result)
            if verdict == DEFER:
                deferred[served.job_id] = (job, result)
            elif verdict == PAY:
                jobs.append(served)
            else:
                dropped.append(f"{served.job_id[:16]}: {verdict}")
        await trio.to_thread.run_sync(view.refresh, set(), {j.client for j in jobs})
        previous_record = await store.latest_settlement()
        previous = {a: int(v) for a, v in (previous_record or {}).get("cumulative", {}).items()}
        fee_bps = await trio.to_thread.run_sync(self.registry.value, "protocolFeeBps")
        settlement = build_settlement(epoch, jobs, previous=previous, fee_bps=fee_bps,
                                      available=view.deposits, bounties=bounties)
        for reason in dropped + settlement.dropped:
            log.warning("epoch %d: charge dropped: %s", epoch, reason)
        evidence_hash = _evidence_root(sorted(verdicts.behind.values()))
        record = {
            "epoch": epoch, "after": last, "root": settlement.tree.root,
            "cumulative": {a: str(v) for a, v in settlement.cumulative.items()},
            "proofs": {a: list(p) for a, p in settlement.tree.proofs.items()},
            "charges": {c: str(v) for c, v in settlement.charges.items()},
            "slashes": {a: str(v) for a, v in slashes.items()}, "bounties": {a: str(v) for a, v in bounties.items()},
            "evidence": sorted(evidence.values()), "evidence_hash": evidence_hash.hex(),
            "jobs": len(settlement.jobs), "deferred": len(deferred),
            "job_ids": [j.job_id for j in settlement.jobs],
        }
        await store.save_settlement(epoch, record, record["job_ids"])
        receipt = await trio.to_thread.run_sync(
            lambda: self.registry.settle(epoch, settlement.tree.root, settlement.rewards_added,
                                         settlement.charges, slashes, evidence_hash), limiter=self.limiter)
        await store.run(self._keep_deferred, deferred, sorted(verdicts.convicted), epoch)
        log.info("settled", extra={"fields": {"epochs": f"{last + 1}-{epoch}", "jobs": len(settlement.jobs),
                                              "charged_wei": settlement.income,
                                              "rewards_wei": settlement.rewards_added,
                                              "slashed_wei": sum(slashes.values()), "deferred": len(deferred),
                                              "dropped": len(dropped) + len(settlement.dropped),
                                              "gas": receipt["gasUsed"]}})

    def _keep_deferred(self, deferred: dict, convicted: list[str], epoch: int) -> None:
        """Deferred jobs replace the previous ones (the rest were paid or dropped now); mark the slashed
        (``Verdicts.convicted``)."""
        store = self.store.sync
        for job, _ in store.pairs(DEFERRED):
            store.drop_pair(DEFERRED, wire.decode(job).digest)
        for job_id, (job, result) in deferred.items():
            store.put_pair(DEFERRED, job_id, job, result)
        for job_id in convicted:
            store.mark_slashed(job_id, epoch)

    async def catch_up_attestations(self, jobs: list[bytes]) -> None:
        """Ask every fresh peer for attestations of the jobs being settled that this node has no
        verdict for: gossip does not replay what arrived while it was down."""
        verification = self.verification
        known = {job_id for job_id, _ in verification.known_jobs()}
        missing = [job_id for job_id in (wire.decode(job).digest for job in jobs) if job_id not in known]
        for start in range(0, len(missing), 256):
            request = wire.AttestationsRequest(job_ids=tuple(missing[start:start + 256]))
            for entry in self.peers.fresh(time.monotonic()):
                if entry.peer_id == self.peer_id:
                    continue
                try:
                    with trio.fail_after(30):
                        answer = await self.dialer.ask(entry.peer_id, request)
                    if answer.type != "attestations":
                        continue
                    for data in answer.message.items:
                        envelope = wire.decode(data)
                        await trio.to_thread.run_sync(verification.validate, envelope)
                        await verification.record(data, envelope)
                except Exception as exc:  # that peer's attestations come next time
                    log.debug("no attestations from %s: %s", entry.peer_id, exc)

    async def verified(self, job: bytes, result: bytes) -> str:
        """PAY, DEFER (its draw or attestations may still come), or why a job is not paid."""
        verification = self.verification
        job_env, result_env = wire.decode(job), wire.decode(result)
        try:
            beacon = await verification.beacon(job_env.message)
        except ChainError:
            return DEFER
        if beacon is None:
            return DEFER
        outcome = verification.outcome(job_env.digest, result_env.digest, beacon.number)
        if outcome == "invalid":
            return "proven invalid by a quorum of verifiers"
        p = verification.probability(result_env.signer_peer_id)
        if outcome == "valid" or not is_drawn(draw_value(job_env.digest, result_env.digest, beacon.hash), p):
            return PAY
        if time.time() < beacon.timestamp + self.config.attestation_window:
            return DEFER
        return f"drawn for verification (p={p:.2f}) and not attested valid ({outcome})"

    async def convictions(self, reported: dict[str, tuple[bytes, bytes]]) -> Verdicts:
        """Slashes (address -> wei), verifier bounties and the evidence (job id -> hash) for every
        lie a quorum of named verifiers proved, and not slashed yet; ``reported`` holds the signed
        (job, result) pairs being settled, by job id, to build evidence from.

        Before it slashes a worker, the oracle re-scores the result on its own copy of the model
        when it has one.  If it finds the result valid, nobody is slashed for it: its signed
        ``valid`` acquits the worker on every node (proofs.reputation.job_outcome) and costs the
        accusers their reputation; when another named verifier also attested it valid, the
        accusers are slashed as liars themselves (chain.settlement.verify_false_accusation).
        Without the model, the oracle slashes on the named verifiers' word alone.
        """
        verification, view = self.verification, self.billing.view
        verdicts = Verdicts()
        for job_id, result_hash, voters in verification.proven_lies():
            if await self.store.is_slashed(job_id):
                continue
            data = await self.evidence(job_id, result_hash, voters, reported.get(job_id))
            if data is None:
                continue
            try:
                lie = await trio.to_thread.run_sync(lambda d=data: verify_evidence(
                    d, quorum=self.config.quorum, eligible=verification.eligible))
            except (SettlementError, ChainError) as exc:
                log.warning("job %s: evidence does not hold: %s", job_id[:16], exc)
                continue
            if await self.rescore(data) == "valid":  # acquitted: its accusers are handled below
                continue
            await trio.to_thread.run_sync(view.learn_keys, {lie.worker_key, *lie.verifier_keys})
            verdicts.slash(self, lie.worker_key, lie.verifier_keys, job_id, wire.decode(data).digest)
        for job_id, result_hash in verification.false_accusations():  # accusers slashed before are skipped
            pair = reported.get(job_id) or await self.store.pair(HELD, job_id)
            if pair is not None:
                await self.punish_accusers(job_id, result_hash, pair, verdicts)
        return verdicts

    async def rescore(self, data: bytes) -> str | None:
        """The oracle's own verdict on the result inside evidence (signed and gossiped as the
        arbiter's attestation), or None when it does not serve the model."""
        evidence = wire.decode(data).message
        job, result = wire.decode(evidence.job), wire.decode(evidence.result)
        served = self.served.get(job.message.served_key)
        if served is None:
            log.warning("job %s: the oracle does not serve %s, so it slashes on the verifiers' word alone",
                        job.digest[:16], job.message.model.name)
            return None
        beacon = await self.verification.beacon(job.message)
        if beacon is None:
            return None
        await self.store.put_pair(HELD, job.digest, evidence.job, evidence.result)
        signed = await self.verification.attest(served, job, result, beacon)
        return wire.decode(signed).message.verdict

    async def punish_accusers(self, job_id: str, result_hash: str, pair: tuple[bytes, bytes],
                              verdicts: Verdicts) -> None:
        """The oracle found valid a result named verifiers called invalid: slash the accusers not
        slashed for it yet if another named verifier agrees with the oracle, else only their
        reputation pays.  Accusations gossiped after a settlement slashed the first accusers are
        punished in the next one."""
        verification = self.verification
        accusation = verification.evidence_of(job_id, result_hash, *pair, verdicts=("invalid", "valid"))
        try:
            false = await trio.to_thread.run_sync(lambda: verify_false_accusation(
                accusation, arbiter_key=bytes(self.key.verify_key), eligible=verification.eligible))
        except (SettlementError, ChainError) as exc:
            if job_id not in self._unpunished:  # checked again each settlement: a witness may still come
                self._unpunished.add(job_id)
                log.warning("job %s: the oracle re-scored it valid, so nobody is slashed for it; the accusers "
                            "lose reputation only (%s)", job_id[:16], exc)
            return
        view = self.billing.view
        await trio.to_thread.run_sync(view.learn_keys, {*false.accuser_keys, *false.witness_keys})
        unpunished = [key for key in false.accuser_keys
                      if not await self.store.is_slashed(accused_mark(job_id, view.address_of_key(key)))]
        if not unpunished:
            return
        await self.store.put_evidence(wire.decode(accusation).digest, job_id, accusation)
        for accuser in unpunished:
            verdicts.slash(self, accuser, tuple(k for k in false.witness_keys if k != bytes(self.key.verify_key)),
                           job_id, wire.decode(accusation).digest, accuser=True)

    async def evidence(self, job_id: str, result_hash: str, voters: list[str],
                       pair: tuple[bytes, bytes] | None = None) -> bytes | None:
        """Evidence for a proven lie: from our store, else from the reported job and result
        (``pair``), else with the job and result a verifier holds."""
        verification = self.verification
        data = await self.store.evidence(job_id)
        if data is None and pair is not None and wire.decode(pair[1]).digest == result_hash:
            data = verification.evidence_of(job_id, result_hash, *pair)
        for voter in ([] if data else voters):
            try:
                with trio.fail_after(30):
                    answer = await self.dialer.ask_raw(voter, wire.sign(wire.EvidenceRequest(hash=job_id), self.key))
                held = wire.decode(answer).message
                data = verification.evidence_of(job_id, result_hash, held.job, held.result)
                await trio.to_thread.run_sync(lambda d=data: verify_evidence(
                    d, quorum=self.config.quorum, eligible=verification.eligible))
                break
            except Exception as exc:  # unreachable, no evidence, bad evidence: ask the next voter
                log.warning("no evidence for job %s from %s: %s", job_id[:16], voter, exc)
                data = None
        if data is not None:
            await self.store.put_evidence(wire.decode(data).digest, job_id, data)
        return data

    async def collect(self, after: int, upto: int) -> list[tuple[bytes, bytes]]:
        """Every fresh peer's report (and our own) for epochs (after, upto]."""
        entries = list(await self.store.served_between(after, upto))
        for entry in self.peers.fresh(time.monotonic()):
            if entry.peer_id == self.peer_id:
                continue
            try:
                with trio.fail_after(30):
                    entries += await self.ask_report(entry.peer_id, after, upto)
            except Exception as exc:  # an unreachable or slow peer is paid at the next settlement
                log.warning("no report from %s: %s", entry.peer_id, exc or type(exc).__name__)
        return entries

    async def ask_report(self, peer_id: str, after: int, upto: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        offset = 0
        while True:
            envelope = await self.dialer.ask(peer_id, wire.ReportRequest(after=after, upto=upto, offset=offset))
            if envelope.type != "report" or envelope.signer_peer_id != peer_id:
                raise wire.WireError(f"expected {peer_id}'s signed report, got a {envelope.type}")
            out += [(e.job, e.result) for e in envelope.message.entries]
            offset = envelope.message.next_offset
            if not offset:
                return out


@dataclass(kw_only=True, eq=False)
class Reports:
    """Answers ``/inferad/settlement/1.0.0`` on every node: reports for the oracle, reward proofs,
    evidence and attestations for anyone (see the module docstring).

    Args:   key: this node's signing key (reports and proofs are signed with it).
            store: served jobs, settlements and attestations are read from it.
            chain_view: whose ``oracle_key`` may ask for reports (None: no chain, no reports).
            verification: builds evidence from held pairs (None: no chain, no evidence).
    """

    key: Any
    store: AsyncStore
    chain_view: ChainView | None
    verification: Verification | None

    async def serve(self, envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
        """Serve one settlement request. Raises JobRejected (``no_evidence``, ``no_rewards``, ``forbidden``)."""
        request = envelope.message
        if envelope.type == "evidence_request":
            if self.verification is None:
                raise JobRejected("no_evidence", f"no evidence {request.hash[:16]}… here")
            await framed.send(await self.verification.held_evidence(request.hash))
            return
        if envelope.type == "attestations_request":
            items: list[bytes] = []
            for job_id in request.job_ids:
                items += (await self.store.attestations(job_id))[: 2048 - len(items)]
            await framed.send(wire.encode_unsigned(wire.AttestationSet(items=tuple(items))))
            return
        if envelope.type == "proof_request":
            record = await self.store.latest_settlement()
            if record is None or request.account not in record["cumulative"]:
                raise JobRejected("no_rewards", f"no settled rewards for {request.account} here")
            proof = wire.RewardProof(account=request.account, epoch=record["epoch"], root=record["root"],
                                     cumulative=amount_bytes(int(record["cumulative"][request.account])),
                                     proof=tuple(record["proofs"][request.account]))
            await framed.send(wire.sign(proof, self.key))
            return
        view = self.chain_view
        if view is None or view.oracle_key is None or envelope.signer != view.oracle_key:
            raise JobRejected("forbidden", "reports are for the oracle registered on chain")
        entries = await self.store.served_between(request.after, request.upto)
        page, next_offset = report_pages(entries, request.offset)
        report = wire.Report(after=request.after, upto=request.upto, entries=tuple(page), next_offset=next_offset)
        await framed.send(wire.sign(report, self.key))


async def fetch_proof(account: str, *, key: Any, store: AsyncStore, chain_view: ChainView | None,
                      dialer: Dialer) -> dict:
    """The latest reward proof of ``account``: from ``store`` on the oracle's node (``key`` is the
    oracle's), else from the oracle over ``dialer``.
    Raises ChainError when there is none, or the oracle's answer is not one."""
    view = chain_view
    if view is None or view.oracle_key is None:
        raise ChainError("no chain, or the oracle has no node key registered on chain")
    oracle_peer = wire.peer_id_from_public_key(view.oracle_key)
    try:
        if view.oracle_key == bytes(key.verify_key):
            record = await store.latest_settlement()
            if record is None or account not in record["cumulative"]:
                raise ChainError(f"no settled rewards for {account} yet")
            return {"epoch": record["epoch"], "cumulative": int(record["cumulative"][account]),
                    "proof": [p.hex() for p in record["proofs"][account]]}
        envelope = await dialer.ask(oracle_peer, wire.ProofRequest(account=account))
    except StreamClosed as exc:
        raise ChainError(f"the oracle {oracle_peer} did not answer: {exc}") from None
    if envelope.type == "error":
        raise ChainError(f"the oracle says: {envelope.message.message}")
    if envelope.type != "proof" or envelope.signer != view.oracle_key:
        raise ChainError("the oracle's answer is not a signed proof")
    proof = envelope.message
    return {"epoch": proof.epoch, "cumulative": int.from_bytes(proof.cumulative, "big"),
            "proof": [p.hex() for p in proof.proof]}
