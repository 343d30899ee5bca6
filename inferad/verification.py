"""Verification on a node (DESIGN §7): draws, verify requests, attestations, reputation.

The rules are pure and live in ``proofs/``; this module does the I/O around
them.  A gateway that delivered a result waits for the job's beacon block
(the first block at or after the job's expiry, ``chain.beacon``), draws, and
if the job is drawn asks the first ``verifiers`` peers of the rendezvous
order on ``/inferad/verify/1.0.0`` (one that fails or times out is replaced
by the next).  A verifier re-scores the result on its own copy of the model
(:func:`rescore`, queued with its jobs), signs an attestation, answers and
gossips it on ``/inferad/attestations/1``.  Every node stores every
attestation it accepts and computes reputation from them, so all views
converge on the same signed data; when a quorum finds a result invalid,
nodes holding the job and result keep the evidence for the oracle.

A :class:`Verification` is handed what it uses: the node's key and config,
the chain view (beacons, stakes, the oracle's key), the store, the served
engines (to re-score on), a way to ask a peer (``ask``), to publish on the
attestation topic (``publish``) and to tell a staked peer (``is_staked``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from chain.beacon import Beacon, BeaconFinder
from chain.errors import ChainError
from chain.settlement import SettlementError, verify_evidence
from chain.view import ChainView, StakeTable
from inferad.admission import JobRejected
from inferad.config import Config
from inferad.engine import EngineError
from inferad.models import ModelError
from inferad.store import AsyncStore, jsonable
from p2p import wire
from p2p.mesh import PROTOCOL_SETTLEMENT, PROTOCOL_VERIFY, TOPIC_ATTESTATIONS, GossipSettings
from p2p.streams import FramedStream
from proofs.check import (
    INCONCLUSIVE,
    INVALID,
    VALID,
    Claim,
    Position,
    Thresholds,
    Verdict,
    check_claim,
    check_logprobs,
    combine,
    judge,
)
from proofs.draw import SPACE, checked_positions, draw_value, is_drawn, named_verifiers
from proofs.reputation import (
    Evidence,
    Vote,
    evidence_by_worker,
    false_accusers,
    job_outcome,
    reputation,
    verify_probability,
)

log = logging.getLogger("inferad.verify")
HELD = b"held/"  # store pairs: a job and result kept as evidence to come


class AskPeer(Protocol):
    async def __call__(self, peer_id: str, request: bytes, protocol: str = PROTOCOL_SETTLEMENT, *,
                       timeout: float = 30) -> bytes: ...


class EvidenceUnavailable(Exception):
    """Evidence asked for by hash does not exist, or does not hold; the message says which."""


def expiry_s(job: wire.JobRequest) -> int:
    """The beacon moment of a job: its expiry, in whole seconds (rounded up)."""
    return -(-job.expires_at // 1000)


def rescore(engine: Any, job_id: str, job: wire.JobRequest, result: wire.JobResult,
            thresholds: Thresholds, beacon: bytes | None = None) -> Verdict:
    """The verdict on a result of job ``job_id``, one teacher-forced evaluation per choice; blocking.

    Each choice is judged on its own (its usage share: what ``usage.completion_tokens`` claims
    beyond the other choices' tokens; a sampled choice against the public draws of ``job_id``;
    its reported log-probabilities, when the job asked for them), and the verdicts combine as
    :func:`proofs.check.combine` says.  With the draw's ``beacon``, the positions re-scored are
    those :func:`proofs.draw.checked_positions` draws (all of an output of up to 32 tokens), and
    every position of a choice whose drawn ones hold an excursion (a draw only the rare tail of
    float noise explains, which one draw may be): a spoof that parts from the model by about the
    noise shows it at more than one position; without it (a receipt checked locally), every position.

    When this engine is batch-invariant and the result names the same engine (the same build's
    fingerprint, batch-invariant too), the verifier's logits are the worker's bit for bit and
    :meth:`Thresholds.exact` replaces ``thresholds``."""
    if getattr(engine, "batch_invariant", False) and result.engine == engine.info:
        thresholds = Thresholds.exact()
    if result.job_id != job_id:
        return Verdict(INVALID, f"the result answers job {result.job_id[:16]}…, not {job_id[:16]}…")
    choices = result.all_choices()
    if len(choices) != job.params.n:
        return Verdict(INVALID, f"the result has {len(choices)} choice(s); the job asked for {job.params.n}")
    verdicts = []
    try:
        prompt = engine.prompt_tokens(job)
        for index, choice in enumerate(choices):
            others = sum(len(c.output_tokens) for c in choices if c is not choice)
            replay = engine.replay(choice.output_tokens, job.params)
            bad = check_claim(Claim(
                model_sha256=result.model.sha256, expected_model_sha256=job.model.sha256,
                prompt_tokens=result.usage.prompt_tokens, expected_prompt_tokens=len(prompt),
                completion_tokens=result.usage.completion_tokens - others, output_tokens=len(choice.output_tokens),
                text=choice.text, replayed_text=replay.text, finish_reason=choice.finish_reason,
                replayed_finish_reason=replay.finish_reason, tokens_after_end=replay.tokens_after_end,
                max_tokens=job.params.max_tokens))
            if bad is None and (job.params.logprobs is None) != (choice.logprobs is None):
                bad = Verdict(INVALID, "log-probabilities where the job asked for none, or none where it did")
            if bad is None:
                only = None if beacon is None else checked_positions(beacon, job_id, index, len(choice.output_tokens))
                positions, bad = _judged(engine, prompt, choice, index, job, job_id, thresholds, only)
                partial = len(positions) < len(choice.output_tokens)
                if bad.verdict == VALID and bad.metrics.get("excursions") and partial:  # the whole output decides
                    positions, bad = _judged(engine, prompt, choice, index, job, job_id, thresholds, None)
                if bad.verdict == VALID and choice.logprobs is not None:
                    bad = check_logprobs([choice.logprobs[p.index].logprob for p in positions], positions,
                                         thresholds) or bad
            verdicts.append(bad)
    except EngineError as exc:
        return Verdict(INCONCLUSIVE, f"cannot re-score: {exc}")
    return combine(verdicts)


def _judged(engine: Any, prompt: list[int], choice: wire.Choice, index: int, job: wire.JobRequest, job_id: str,
            thresholds: Thresholds, only: list[int] | None) -> tuple[list[Position], Verdict]:
    """The positions ``only`` (None: all) of one choice re-scored, and the verdict on them."""
    positions = engine.score(prompt, choice.output_tokens, job.params, job_id=job_id, choice=index,
                             slack=thresholds.nucleus_slack, only=only)
    return positions, judge(positions, temperature=job.params.temperature, thresholds=thresholds)


@dataclass(kw_only=True, eq=False)
class Verification:
    """Draws, verify requests and attestations of one node, and the reputations they make.

    Args:   key: this node's signing key (attestations and verify requests are signed with it).
            config: quorum, verifiers, timeouts, the attestation window, the probability floor.
            chain_view: the chain (beacon blocks, stakes, the oracle's key).
            stakes: the stake history (who was staked at a beacon block).
            store: attestations, evidence and held pairs are kept here.
            served: the engines this node re-scores on, by ``wire.served_key``.
            engine_for: the engine for a model this node does not serve, fetched from peers when the
                draw names it for a job on one (:class:`inferad.worker.VerifyingModels`); None
                when the model cannot be had.  Raises ModelError with why.
            ask: one request to a peer and its answer (inferad.membership.Dialer.ask_raw).
            publish: gossips a signed attestation.
            is_staked: whether a peer id is staked (verify requests come from staked gateways).
            attestations_counted: the metric counting accepted attestations by verdict.
    """

    key: Any
    config: Config
    chain_view: ChainView
    stakes: StakeTable
    store: AsyncStore
    served: dict[str, Any]
    engine_for: Callable[[str], Awaitable[Any]]
    ask: AskPeer
    publish: Callable[[bytes], Awaitable[None]]
    is_staked: Callable[[str], bool]
    attestations_counted: Any
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        self.peer_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))
        self.beacons = BeaconFinder(self.chain_view.registry.w3)
        self._votes: dict[tuple[str, str], dict[str, Vote]] = {}  # (job, result hash) -> verifier -> vote
        self._raw: dict[tuple[str, str], dict[str, bytes]] = {}  # the signed attestations behind them
        self._evidence: dict[str, Evidence] | None = {}  # worker -> attested evidence (None: recount)
        self._local: dict[str, Evidence] = {}  # peer -> what this node saw itself (timeouts)
        self.verified_here = 0

    # ------------------------------------------------------------------ reputation

    async def load(self) -> None:
        """Count the attestations stored before this start."""
        for data in await self.store.attestations():
            self._count(wire.decode(data), data)
        log.info("reputation from %d stored attestation(s)", sum(len(v) for v in self._votes.values()))

    async def resume(self, nursery: trio.Nursery) -> None:
        """Follow again the delivered results whose draw a restart interrupted (the gateway
        records the draw when it is done, so a job without that record was not finished)."""
        now = time.time()
        pending = [r for r in await self.store.run(lambda: list(self.store.sync.jobs()))
                   if r.status == "done" and (r.meta or {}).get("role") == "gateway"
                   and "verification" not in r.meta
                   and expiry_s(wire.decode(r.job).message) + self.config.attestation_window > now]
        for record in pending:
            nursery.start_soon(self.follow, record.job_id, record.job, record.result)
        if pending:
            log.info("resuming the verification of %d delivered job(s)", len(pending))

    def evidence(self, peer_id: str) -> Evidence:
        if self._evidence is None:
            votes = [v for by in self._votes.values() for v in by.values()]
            self._evidence = evidence_by_worker(votes, quorum=self.config.quorum, arbiter=self.arbiter)
        attested, local = self._evidence.get(peer_id, Evidence()), self._local.get(peer_id, Evidence())
        return attested.add(failures=local.failures, successes=local.successes)

    def reputation(self, peer_id: str) -> float:
        return reputation(self.evidence(peer_id))

    def probability(self, peer_id: str) -> float:
        return verify_probability(self.evidence(peer_id), floor=self.config.probability_floor)

    def app_score(self, peer: Any) -> float:
        """Gossipsub's application-specific score (P6): a convicted cheater sinks
        below the gossip threshold, so the network layer demotes it too."""
        return 20.0 * (self.reputation(peer.to_base58()) - 0.5)

    @property
    def arbiter(self) -> str | None:
        """The oracle's peer id: its re-score acquits (proofs.reputation.job_outcome)."""
        key = self.chain_view.oracle_key
        return None if key is None else wire.peer_id_from_public_key(key)

    def outcome(self, job_id: str, result_hash: str, beacon_block: int | None = None) -> str:
        """The verdict of the attestations held; pass the job's beacon block when the job is
        known, so that only attestations made at it count."""
        return job_outcome(list(self._votes.get((job_id, result_hash), {}).values()), quorum=self.config.quorum,
                           arbiter=self.arbiter, beacon_block=beacon_block)

    def summary(self) -> dict:
        return {"attestations": sum(len(v) for v in self._votes.values()), "verified_here": self.verified_here,
                "proven_lies": len(self.proven_lies())}

    def known_jobs(self) -> set[tuple[str, str]]:
        return set(self._votes)

    def false_accusations(self) -> list[tuple[str, str]]:
        """(job id, result hash) of every result the oracle re-scored valid that verifiers called invalid."""
        return [key for key, votes in self._votes.items()
                if false_accusers(list(votes.values()), arbiter=self.arbiter)]

    def proven_lies(self) -> list[tuple[str, str, list[str]]]:
        """(job id, result hash, verifiers who found it invalid) for every result a quorum convicted."""
        return [(job_id, result_hash, sorted(v for v, vote in votes.items() if vote.verdict == "invalid"))
                for (job_id, result_hash), votes in self._votes.items()
                if self.outcome(job_id, result_hash) == "invalid"]

    def _count(self, envelope: wire.Envelope, data: bytes) -> bool:
        a: wire.Attestation = envelope.message
        key, verifier = (a.job_id, a.result_hash), envelope.signer_peer_id
        if verifier in self._votes.get(key, {}):
            return False
        self._votes.setdefault(key, {})[verifier] = Vote(a.job_id, a.result_hash, a.worker, verifier, a.verdict,
                                                          a.beacon_block)
        self._raw.setdefault(key, {})[verifier] = data
        self._evidence = None
        return True

    async def record(self, data: bytes, envelope: wire.Envelope) -> None:
        """Keep an attestation (from a verifier's answer, gossip or ourselves)."""
        a: wire.Attestation = envelope.message
        if not self._count(envelope, data):
            return
        self.attestations_counted.labels(a.verdict).inc()
        await self.store.put_attestation(a.job_id, envelope.signer_peer_id, data)
        if a.verdict == "invalid" and self.outcome(a.job_id, a.result_hash) == "invalid":
            log.warning("worker %s proven to lie about job %s (%s)", a.worker, a.job_id[:16], a.reason)
            await self._keep_evidence(a.job_id, a.result_hash)

    async def _keep_evidence(self, job_id: str, result_hash: str) -> None:
        """If this node holds the job and result (gateway or verifier), store the evidence."""
        pair = await self.store.pair(HELD, job_id)
        if pair is None:
            record = await self.store.job(job_id)
            pair = (record.job, record.result) if record is not None and record.result is not None else None
        if pair is None or wire.decode(pair[1]).digest != result_hash:
            return
        data = self.evidence_of(job_id, result_hash, *pair)
        try:
            await trio.to_thread.run_sync(lambda: verify_evidence(data, quorum=self.config.quorum,
                                                                  eligible=self.eligible))
        except (SettlementError, ChainError) as exc:
            log.warning("evidence for job %s not kept: %s", job_id[:16], exc)
            return
        await self.store.put_evidence(wire.decode(data).digest, job_id, data)

    def evidence_of(self, job_id: str, result_hash: str, job: bytes, result: bytes,
                    verdicts: tuple[str, ...] = ("invalid",)) -> bytes:
        """An evidence message from the attestations with ``verdicts`` this node holds (invalid ones
        prove a lie; invalid and valid ones, the oracle's among them, a false accusation)."""
        votes = self._votes.get((job_id, result_hash), {})
        raw = self._raw.get((job_id, result_hash), {})
        chosen = tuple(sorted(raw[v] for v, vote in votes.items() if vote.verdict in verdicts))
        return wire.encode_unsigned(wire.Evidence(job=job, result=result, attestations=chosen[:16]))

    def describe(self, job_id: str, view: dict) -> dict:
        """The verification part of ``inferad jobs <id> --json``."""
        result_hash = view.get("result_hash")
        if result_hash is None:
            return view
        verification = dict(view.get("verification") or {"status": "not followed by this node"})
        raw = self._raw.get((job_id, result_hash), {})
        verification["attestations"] = [
            dict(jsonable(wire.view(wire.decode(data).message)), verifier=verifier)
            for verifier, data in sorted(raw.items())]
        if raw or verification.get("drawn"):
            verification["status"] = self.outcome(job_id, result_hash)
        view["verification"] = verification
        return view

    # ------------------------------------------------------------------ gateway: draw and ask

    async def beacon(self, job: wire.JobRequest) -> Beacon | None:
        """The job's beacon block once mined (None before its expiry has passed on chain)."""
        return await trio.to_thread.run_sync(self.beacons.first_at_or_after, expiry_s(job))

    async def follow(self, job_id: str, job: bytes, result: bytes) -> None:
        """After delivering a result: draw, and have it verified if drawn. Runs as a task of the
        node's nursery, so nothing may escape it: a failure is logged (the oracle then sees an
        unverified drawn job and does not pay it)."""
        try:
            await self._follow(job_id, job, result)
        except Exception:
            log.exception("verification of job %s failed", job_id[:16])

    async def _follow(self, job_id: str, job: bytes, result: bytes) -> None:
        job_env, result_env = wire.decode(job), wire.decode(result)
        beacon, delay = None, 1.0
        deadline = expiry_s(job_env.message) + self.config.attestation_window
        await trio.sleep(max(expiry_s(job_env.message) - time.time(), 0))
        while beacon is None and time.time() < deadline:
            try:
                beacon = await self.beacon(job_env.message)
            except ChainError as exc:
                log.debug("beacon of job %s not read yet: %s", job_id[:16], exc)
            if beacon is None:
                await trio.sleep(delay)
                delay = min(delay * 2, 10.0)
        if beacon is None:
            await self.store.update_meta(job_id, verification={"status": "no beacon: chain unreachable"})
            return
        worker = result_env.signer_peer_id
        d = draw_value(job_id, result_env.digest, beacon.hash)
        p = self.probability(worker)
        record: dict[str, Any] = {"drawn": is_drawn(d, p), "probability": round(p, 4), "draw": round(d / SPACE, 6),
                                  "beacon_block": beacon.number, "status": "not drawn"}
        if record["drawn"]:
            named = await trio.to_thread.run_sync(self.named, job_id, result_env.digest, beacon, worker)
            order = [p for p in named if p not in (self.peer_id, job_env.signer_peer_id)]
            request = wire.sign(wire.VerifyRequest(job=job, result=result, beacon_block=beacon.number,
                                                   beacon=beacon.hash), self.key)
            record["verifiers"], record["unanswered"] = await self._ask_verifiers(order, request)
            record["status"] = "asked" if record["verifiers"] else "no verifier answered"
        await self.store.update_meta(job_id, verification=record)

    async def _ask_verifiers(self, order: list[str], request: bytes) -> tuple[list[str], list[str]]:
        answered: list[str] = []
        failed: list[str] = []
        queue = iter(order)

        async def asker() -> None:
            for peer in queue:  # shared by the askers: a failed verifier is replaced by the next in order
                try:
                    await self._ask(peer, request)
                    answered.append(peer)
                    return
                except Exception as exc:  # unreachable, timed out, refused: ask the next one
                    log.info("verifier %s did not answer: %s", peer, exc or type(exc).__name__)
                    failed.append(peer)
                    self._local[peer] = self._local.get(peer, Evidence()).add(failures=1)

        async with trio.open_nursery() as nursery:
            for _ in range(self.config.verifiers):
                nursery.start_soon(asker)
        return answered, failed

    async def _ask(self, peer: str, request: bytes) -> None:
        data = await self.ask(peer, request, PROTOCOL_VERIFY, timeout=self.config.verify_timeout)
        envelope = wire.decode(data, max_size=self.config.max_frame)
        if envelope.type == "error":
            raise RuntimeError(f"{envelope.message.code}: {envelope.message.message}")
        if envelope.type != "attestation" or envelope.signer_peer_id != peer:
            raise wire.WireError(f"expected {peer}'s attestation, got a {envelope.type}")
        await trio.to_thread.run_sync(self.validate, envelope)
        await self.record(data, envelope)

    # ------------------------------------------------------------------ verifier

    async def serve(self, envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
        """Answer one verify_request with a signed attestation (and gossip it). Raises JobRejected."""
        request: wire.VerifyRequest = envelope.message
        try:
            job_env = wire.decode(request.job, max_size=self.config.max_frame)
            result_env = wire.decode(request.result, max_size=self.config.max_frame)
        except wire.WireError as exc:
            raise JobRejected("bad_request", f"the job or result inside is invalid: {exc}") from None
        job, result = job_env.message, result_env.message
        if job_env.type != "job" or result_env.type != "result" or result.job_id != job_env.digest:
            raise JobRejected("bad_request", "a verify request carries a job and that job's result")
        if not self.is_staked(envelope.signer_peer_id):
            raise JobRejected("unstaked", "verification is for staked gateways")
        if self.peer_id in (result_env.signer_peer_id, envelope.signer_peer_id, job_env.signer_peer_id):
            raise JobRejected("party", "a party to a job never verifies it")
        beacon = Beacon(request.beacon_block, request.beacon, 0)
        try:
            if not await trio.to_thread.run_sync(self.beacons.is_beacon, beacon, expiry_s(job)):
                raise JobRejected("bad_beacon", f"block {request.beacon_block} is not the job's beacon")
            named = await trio.to_thread.run_sync(self.named, job_env.digest, result_env.digest, beacon,
                                                  result_env.signer_peer_id)
        except ChainError as exc:
            raise JobRejected("chain_unavailable", f"cannot check the beacon: {exc}") from None
        if self.peer_id not in named:
            raise JobRejected("not_named", "the draw does not name this node for that job, so its attestation "
                                           "would not count")
        served = self.served.get(job.served_key)
        if served is None:  # named for a model this node does not serve: fetch it, if the config allows
            try:
                served = await self.engine_for(job.served_key)
            except ModelError as exc:
                raise JobRejected("unknown_model", f"this node cannot verify {job.model.name}: {exc}") from None
        if served is None:
            raise JobRejected("unknown_model", f"this node does not serve {job.model.name} and fetches no model to "
                                               f"verify (verification.fetch_models = 0)")
        signed = await self.attest(served, job_env, result_env, beacon)
        if wire.decode(signed).message.verdict == "invalid" or self.peer_id == self.arbiter:
            # evidence to come: of a lie, or (the oracle's) of a false accusation
            await self.store.put_pair(HELD, job_env.digest, request.job, request.result)
        await framed.send(signed)

    async def attest(self, served: Any, job: wire.Envelope, result: wire.Envelope, beacon: Beacon) -> bytes:
        """Re-score a result on ``served`` (queued with its jobs), sign the attestation at ``beacon``,
        keep it and gossip it; the signed attestation.  Verifiers and the oracle (as arbiter) use it."""
        started = time.perf_counter()
        verdict = await served.worker.run_in_slot(
            lambda: rescore(served.engine, job.digest, job.message, result.message, self.thresholds, beacon.hash))
        elapsed = int((time.perf_counter() - started) * 1000)
        metrics = verdict.metrics
        attestation = wire.Attestation(
            job_id=job.digest, result_hash=result.digest, worker=result.signer_peer_id,
            model=served.engine.ref.sha256, verdict=verdict.verdict, reason=verdict.reason[:512],
            metrics=wire.VerifyMetrics(positions=int(metrics.get("positions", 0)),
                                       max_gap=_clip(metrics.get("max_gap", 0.0)),
                                       first_bad=metrics.get("position"), elapsed_ms=elapsed,
                                       max_miss=min(max(float(metrics.get("max_miss", 0.0)), 0.0), 1.0),
                                       ambiguous=int(metrics.get("ambiguous", 0))),
            beacon_block=beacon.number, beacon=beacon.hash, ts=int(time.time() * 1000))
        signed = wire.sign(attestation, self.key)
        self.verified_here += 1
        log.info("verified", extra={"fields": {"job": job.digest[:16], "worker": attestation.worker[-8:],
                                               "verdict": verdict.verdict, "ms": elapsed, "reason": verdict.reason}})
        await self.record(signed, wire.decode(signed))
        try:
            await self.publish(signed)
        except Exception as exc:  # no peers on the topic yet: the verifier's answer still reached the gateway
            log.debug("attestation not gossiped: %r", exc)
        return signed

    async def fetch_and_check(self, key: str) -> dict:
        """Evidence by hash or job id (from this node's store, else the oracle's), checked
        by signatures and quorum, and re-scored here if this node serves the model.

        Raises: EvidenceUnavailable (none here nor at the oracle, or it does not hold), JobRejected
        ``no_evidence`` (this node is the oracle and has none), and :meth:`Dialer.ask_raw`'s errors.
        """
        data = await self.store.evidence(key)
        oracle_key = self.chain_view.oracle_key
        if data is None and oracle_key is not None and oracle_key != bytes(self.key.verify_key):
            data = await self.ask(wire.peer_id_from_public_key(oracle_key),
                                  wire.sign(wire.EvidenceRequest(hash=key), self.key))
        elif data is None:
            data = await self.held_evidence(key)
        envelope = wire.decode(data)
        if envelope.type == "error":
            raise EvidenceUnavailable(f"the oracle says: {envelope.message.message}")
        try:
            lie = await trio.to_thread.run_sync(lambda: verify_evidence(data, quorum=self.config.quorum,
                                                                        eligible=self.eligible))
        except (SettlementError, ChainError) as exc:
            raise EvidenceUnavailable(f"evidence {key[:16]}… does not hold: {exc}") from None
        job_env, result_env = wire.decode(envelope.message.job), wire.decode(envelope.message.result)
        view = {"hash": envelope.digest, "job_id": lie.job_id, "worker": result_env.signer_peer_id,
                "model": job_env.message.model.name, "checked": "signatures and quorum verified by this node",
                "attestations": [dict(jsonable(wire.view(a.message)), verifier=a.signer_peer_id)
                                 for a in map(wire.decode, envelope.message.attestations)]}
        served = self.served.get(job_env.message.served_key)
        if served is not None:  # at the positions the attestations' beacon drew, as the verifiers did
            beacon = next((wire.decode(a).message.beacon for a in envelope.message.attestations), None)
            verdict = await served.worker.run_in_slot(
                lambda: rescore(served.engine, job_env.digest, job_env.message, result_env.message, self.thresholds,
                                beacon))
            view["rescored_here"] = {"verdict": verdict.verdict, "reason": verdict.reason}
        return view

    async def held_evidence(self, key: str) -> bytes:
        """Evidence by its hash or its job's id: kept evidence, or built from a result this
        node (as a verifier) found invalid and the attestations it holds for it.
        Raises JobRejected("no_evidence")."""
        data = await self.store.evidence(key)
        if data is None:
            pair = await self.store.pair(HELD, key)
            if pair is not None:
                data = self.evidence_of(key, wire.decode(pair[1]).digest, *pair)
        if data is None:
            raise JobRejected("no_evidence", f"no evidence {key[:16]}… here")
        return data

    # ------------------------------------------------------------------ gossip

    async def gossip(self, pubsub: Any) -> None:
        """Validate and keep every attestation gossiped on ``/inferad/attestations/1``, until
        cancelled; one that cannot be kept is logged and skipped."""
        pubsub.set_topic_validator(TOPIC_ATTESTATIONS, self._validate_gossip, is_async_validator=True)
        subscription = await pubsub.subscribe(TOPIC_ATTESTATIONS)
        while True:
            msg = await subscription.get()
            try:
                envelope = wire.decode(msg.data, max_size=GossipSettings.max_message_bytes)  # validated on the way in
                await self.record(msg.data, envelope)
            except Exception as exc:  # one bad attestation (or a full disk) must not stop the node
                log.warning("attestation not kept: %r", exc)

    async def _validate_gossip(self, forwarder: Any, msg: Any) -> bool:
        """Gossipsub topic validator (asynchronous: the draw check reads the chain, cached per block)."""
        try:
            envelope = wire.decode(msg.data, max_size=GossipSettings.max_message_bytes)
            await trio.to_thread.run_sync(self.validate, envelope)
        except (wire.WireError, ValueError) as exc:
            log.debug("rejected attestation from %s: %s", forwarder, exc)
            return False
        return True

    def named(self, job_id: str, result_hash: str, beacon: Beacon, worker: str) -> list[str]:
        """The verifiers the draw names for a result at ``beacon`` (proofs.draw.named_verifiers over
        the keys staked at the beacon block); blocking (chain reads, cached per block)."""
        staked = [wire.peer_id_from_public_key(key) for key in self.stakes.keys_at(beacon.number)]
        return named_verifiers(draw_value(job_id, result_hash, beacon.hash), staked, worker=worker)

    def validate(self, envelope: wire.Envelope) -> None:
        """Raise WireError unless this attestation may count, as far as a node without the job can
        tell: its beacon is a block of the chain, and its signer is the oracle (an arbiter) or a
        verifier the draw names at that beacon.  Blocking (chain reads, cached)."""
        if envelope.type != "attestation":
            raise wire.WireError("not an attestation")
        a: wire.Attestation = envelope.message
        signer = envelope.signer_peer_id
        if signer == a.worker:
            raise wire.WireError("a worker cannot attest its own result")
        try:
            beacon = self.beacons.block(a.beacon_block)
            if beacon.hash != a.beacon:
                raise wire.WireError(f"the beacon is not the hash of block {a.beacon_block}")
            if signer != self.arbiter and signer not in self.named(a.job_id, a.result_hash, beacon, a.worker):
                raise wire.WireError(f"{signer} is not among the verifiers the draw names for job {a.job_id[:16]}")
        except ChainError as exc:
            raise wire.WireError(f"cannot check the attestation against the chain: {exc}") from None

    def eligible(self, job: wire.Envelope, result: wire.Envelope, attestation: wire.Envelope) -> bool:
        """The whole rule, for holders of the job: the attestation is at the job's own beacon, and
        by the oracle or a named verifier (chain.settlement.Eligible).  Blocking."""
        a: wire.Attestation = attestation.message
        beacon = Beacon(a.beacon_block, a.beacon, 0)
        if not self.beacons.is_beacon(beacon, expiry_s(job.message)):
            return False
        signer = attestation.signer_peer_id
        return signer == self.arbiter or signer in self.named(job.digest, result.digest, beacon,
                                                                result.signer_peer_id)


def _clip(value: float) -> float:
    return max(min(float(value), 1e9), -1e9)
