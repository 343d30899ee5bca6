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
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from chain.beacon import Beacon, BeaconFinder
from chain.errors import ChainError
from chain.settlement import SettlementError, verify_evidence
from inferad.store import jsonable
from p2p import wire
from proofs.check import INCONCLUSIVE, Claim, Thresholds, Verdict, check_claim, judge
from proofs.draw import SPACE, draw_value, draw_verifiers, is_drawn
from proofs.reputation import Evidence, Vote, evidence_by_worker, job_outcome, reputation, verify_probability

log = logging.getLogger("inferad.verify")
HELD, DEFERRED = b"held/", b"deferred/"


def expiry_s(job: wire.JobRequest) -> int:
    """The beacon moment of a job: its expiry, in whole seconds (rounded up)."""
    return -(-job.expires_at // 1000)


def rescore(engine: Any, job: wire.JobRequest, result: wire.JobResult, thresholds: Thresholds) -> Verdict:
    """The verdict on a result from one teacher-forced evaluation; blocking (engine thread)."""
    from inferad.engine import EngineError

    try:
        prompt = engine.prompt_tokens(job)
        replay = engine.replay(result.output_tokens, job.params)
        bad = check_claim(Claim(
            model_sha256=result.model.sha256, expected_model_sha256=job.model.sha256,
            prompt_tokens=result.usage.prompt_tokens, expected_prompt_tokens=len(prompt),
            completion_tokens=result.usage.completion_tokens, output_tokens=len(result.output_tokens),
            text=result.text, replayed_text=replay.text, finish_reason=result.finish_reason,
            replayed_finish_reason=replay.finish_reason, tokens_after_end=replay.tokens_after_end,
            max_tokens=job.params.max_tokens))
        if bad is not None:
            return bad
        positions = engine.score(prompt, result.output_tokens, job.params, thresholds.boundary_margin)
    except EngineError as exc:
        return Verdict(INCONCLUSIVE, f"cannot re-score: {exc}")
    return judge(positions, temperature=job.params.temperature, top_k=job.params.top_k, top_p=job.params.top_p,
                 thresholds=thresholds)


class Verification:
    def __init__(self, node: Any, thresholds: Thresholds = Thresholds()) -> None:
        self.node = node
        self.config = node.config
        self.thresholds = thresholds
        self.beacons = BeaconFinder(node.chain_view.registry.w3)
        self._votes: dict[tuple[str, str], dict[str, Vote]] = {}  # (job, result hash) -> verifier -> vote
        self._raw: dict[tuple[str, str], dict[str, bytes]] = {}  # the signed attestations behind them
        self._evidence: dict[str, Evidence] | None = {}  # worker -> attested evidence (None: recount)
        self._local: dict[str, Evidence] = {}  # peer -> what this node saw itself (timeouts)
        self.verified_here = 0

    # ------------------------------------------------------------------ reputation

    async def load(self) -> None:
        node = self.node
        for data in await node.db(node.store.attestations):
            self._count(wire.decode(data), data)
        log.info("reputation from %d stored attestation(s)", sum(len(v) for v in self._votes.values()))

    async def resume(self, nursery: trio.Nursery) -> None:
        """Follow again the delivered results whose draw a restart interrupted (the gateway
        records the draw when it is done, so a job without that record was not finished)."""
        node = self.node
        now = time.time()
        pending = [r for r in await node.db(lambda: list(node.store.jobs()))
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
            self._evidence = evidence_by_worker(votes, quorum=self.config.quorum)
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

    def outcome(self, job_id: str, result_hash: str) -> str:
        return job_outcome(list(self._votes.get((job_id, result_hash), {}).values()), quorum=self.config.quorum)

    def summary(self) -> dict:
        return {"attestations": sum(len(v) for v in self._votes.values()), "verified_here": self.verified_here,
                "proven_lies": len(self.proven_lies())}

    def known_jobs(self) -> set[tuple[str, str]]:
        return set(self._votes)

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
        self._votes.setdefault(key, {})[verifier] = Vote(a.job_id, a.result_hash, a.worker, verifier, a.verdict)
        self._raw.setdefault(key, {})[verifier] = data
        self._evidence = None
        return True

    async def record(self, data: bytes, envelope: wire.Envelope) -> None:
        """Keep an attestation (from a verifier's answer, gossip or ourselves)."""
        a: wire.Attestation = envelope.message
        if not self._count(envelope, data):
            return
        node = self.node
        node.metrics.attestations.labels(a.verdict).inc()
        await node.db(node.store.put_attestation, a.job_id, envelope.signer_peer_id, data)
        if a.verdict == "invalid" and self.outcome(a.job_id, a.result_hash) == "invalid":
            log.warning("worker %s proven to lie about job %s (%s)", a.worker, a.job_id[:16], a.reason)
            await self._keep_evidence(a.job_id, a.result_hash)

    async def _keep_evidence(self, job_id: str, result_hash: str) -> None:
        """If this node holds the job and result (gateway or verifier), store the evidence."""
        node = self.node
        pair = await node.db(node.store.pair, HELD, job_id)
        if pair is None:
            record = await node.db(node.store.job, job_id)
            pair = (record.job, record.result) if record is not None and record.result is not None else None
        if pair is None or wire.decode(pair[1]).digest != result_hash:
            return
        data = self.evidence_of(job_id, result_hash, *pair)
        try:
            verify_evidence(data, quorum=self.config.quorum)
        except SettlementError as exc:
            log.warning("evidence for job %s not kept: %s", job_id[:16], exc)
            return
        await node.db(node.store.put_evidence, wire.decode(data).digest, job_id, data)

    def evidence_of(self, job_id: str, result_hash: str, job: bytes, result: bytes) -> bytes:
        """An evidence message from the invalid attestations this node holds."""
        votes = self._votes.get((job_id, result_hash), {})
        raw = self._raw.get((job_id, result_hash), {})
        invalid = tuple(sorted(raw[v] for v, vote in votes.items() if vote.verdict == "invalid"))
        return wire.encode_unsigned(wire.Evidence(job=job, result=result, attestations=invalid[:16]))

    def describe(self, job_id: str, view: dict) -> dict:
        """The verification part of ``inferad jobs <id> --json``."""
        result_hash = view.get("result_hash")
        if result_hash is None:
            return view
        verification = dict(view.get("verification") or {"status": "not followed by this node"})
        raw = self._raw.get((job_id, result_hash), {})
        verification["attestations"] = [
            dict(jsonable(wire.unparse(wire.decode(data).message)), verifier=verifier)
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
        node = self.node
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
            await node.db(node.store.update_meta, job_id, verification={"status": "no beacon: chain unreachable"})
            return
        worker = result_env.signer_peer_id
        d = draw_value(job_id, result_env.digest, beacon.hash)
        p = self.probability(worker)
        record: dict[str, Any] = {"drawn": is_drawn(d, p), "probability": round(p, 4), "draw": round(d / SPACE, 6),
                                  "beacon_block": beacon.number, "status": "not drawn"}
        if record["drawn"]:
            order = draw_verifiers(d, self.providers(job_env.message.model.sha256), worker=worker,
                                   gateway=node.peer_id, client=job_env.signer_peer_id)
            request = wire.sign(wire.VerifyRequest(job=job, result=result, beacon_block=beacon.number,
                                                   beacon=beacon.hash), node.key)
            record["verifiers"], record["unanswered"] = await self._ask_verifiers(order, request)
            record["status"] = "asked" if record["verifiers"] else "no verifier answered"
        await node.db(node.store.update_meta, job_id, verification=record)

    def providers(self, model_sha256: str) -> list[str]:
        node = self.node
        found = [e.peer_id for e in node.peers.providers(model_sha256, time.monotonic())
                 if node.peer_is_staked(e.peer_id)]
        local = node.is_staked_self() and model_sha256 in node.served
        return found + ([node.peer_id] if local else [])

    async def _ask_verifiers(self, order: list[str], request: bytes) -> tuple[list[str], list[str]]:
        answered: list[str] = []
        failed: list[str] = []
        queue = iter(order)

        async def slot() -> None:
            for peer in queue:  # shared by the slots: a failed verifier is replaced by the next in order
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
                nursery.start_soon(slot)
        return answered, failed

    async def _ask(self, peer: str, request: bytes) -> None:
        from p2p.mesh import PROTOCOL_VERIFY

        data = await self.node.ask_peer_raw(peer, request, PROTOCOL_VERIFY, timeout=self.config.verify_timeout)
        envelope = wire.decode(data, max_size=self.node.config.max_frame)
        if envelope.type == "error":
            raise RuntimeError(f"{envelope.message.code}: {envelope.message.message}")
        if envelope.type != "attestation" or envelope.signer_peer_id != peer:
            raise wire.WireError(f"expected {peer}'s attestation, got a {envelope.type}")
        self.validate(envelope)
        await self.record(data, envelope)

    # ------------------------------------------------------------------ verifier

    async def serve(self, envelope: wire.Envelope, data: bytes, framed: Any) -> None:
        """Answer one verify_request with a signed attestation (and gossip it)."""
        from inferad.admission import JobRejected

        node = self.node
        request: wire.VerifyRequest = envelope.message
        try:
            job_env = wire.decode(request.job, max_size=node.config.max_frame)
            result_env = wire.decode(request.result, max_size=node.config.max_frame)
        except wire.WireError as exc:
            raise JobRejected("bad_request", f"the job or result inside is invalid: {exc}") from None
        job, result = job_env.message, result_env.message
        if job_env.type != "job" or result_env.type != "result" or result.job_id != job_env.digest:
            raise JobRejected("bad_request", "a verify request carries a job and that job's result")
        if node.chain_view is not None and not node.peer_is_staked(envelope.signer_peer_id):
            raise JobRejected("unstaked", "verification is for staked gateways")
        if node.peer_id in (result_env.signer_peer_id, envelope.signer_peer_id, job_env.signer_peer_id):
            raise JobRejected("party", "a party to a job never verifies it")
        served = node.served.get(job.model.sha256)
        if served is None:
            raise JobRejected("unknown_model", f"this node does not serve {job.model.name}")
        beacon = Beacon(request.beacon_block, request.beacon, 0)
        try:
            ok = await trio.to_thread.run_sync(self.beacons.is_beacon, beacon, expiry_s(job))
        except ChainError as exc:
            raise JobRejected("chain_unavailable", f"cannot check the beacon: {exc}") from None
        if not ok:
            raise JobRejected("bad_beacon", f"block {request.beacon_block} is not the job's beacon")
        started = time.perf_counter()
        verdict = await served.worker.run_exclusive(lambda: rescore(served.engine, job, result, self.thresholds))
        elapsed = int((time.perf_counter() - started) * 1000)
        metrics = verdict.metrics
        attestation = wire.Attestation(
            job_id=job_env.digest, result_hash=result_env.digest, worker=result_env.signer_peer_id,
            model=served.engine.ref.sha256, verdict=verdict.verdict, reason=verdict.reason[:512],
            metrics=wire.VerifyMetrics(positions=int(metrics.get("positions", 0)),
                                       max_gap=_clip(metrics.get("max_gap", 0.0)), z=_clip(metrics.get("z", 0.0)),
                                       first_bad=metrics.get("position"), elapsed_ms=elapsed),
            beacon_block=request.beacon_block, beacon=request.beacon, ts=int(time.time() * 1000))
        signed = wire.sign(attestation, node.key)
        self.verified_here += 1
        log.info("verified", extra={"fields": {"job": job_env.digest[:16], "worker": attestation.worker[-8:],
                                               "verdict": verdict.verdict, "ms": elapsed, "reason": verdict.reason}})
        if verdict.verdict == "invalid":
            await node.db(node.store.put_pair, HELD, job_env.digest, request.job, request.result)
        await self.record(signed, wire.decode(signed))
        await framed.send(signed)
        await node.publish_attestation(signed)

    async def fetch_and_check(self, key: str) -> dict:
        """Evidence by hash or job id (from this node's store, else the oracle's), checked
        by signatures and quorum, and re-scored here if this node serves the model."""
        from inferad.oracle import held_evidence

        node = self.node
        data = await node.db(node.store.evidence, key)
        oracle_key = node.chain_view.oracle_key
        if data is None and oracle_key is not None and oracle_key != bytes(node.key.verify_key):
            data = await node.ask_peer_raw(wire.peer_id_from_public_key(oracle_key),
                                           wire.sign(wire.EvidenceRequest(hash=key), node.key))
        elif data is None:
            data = await held_evidence(node, key)
        envelope = wire.decode(data)
        if envelope.type == "error":
            raise RuntimeError(f"the oracle says: {envelope.message.message}")
        try:
            lie = verify_evidence(data, quorum=self.config.quorum)
        except SettlementError as exc:
            raise RuntimeError(f"evidence {key[:16]}… does not hold: {exc}") from None
        job_env, result_env = wire.decode(envelope.message.job), wire.decode(envelope.message.result)
        view = {"hash": envelope.digest, "job_id": lie.job_id, "worker": result_env.signer_peer_id,
                "model": job_env.message.model.name, "checked": "signatures and quorum verified by this node",
                "attestations": [dict(jsonable(wire.unparse(a.message)), verifier=a.signer_peer_id)
                                 for a in map(wire.decode, envelope.message.attestations)]}
        served = node.served.get(job_env.message.model.sha256)
        if served is not None:
            verdict = await served.worker.run_exclusive(
                lambda: rescore(served.engine, job_env.message, result_env.message, self.thresholds))
            view["rescored_here"] = {"verdict": verdict.verdict, "reason": verdict.reason}
        return view

    # ------------------------------------------------------------------ gossip

    def validate(self, envelope: wire.Envelope) -> None:
        """Raise WireError unless this is an attestation worth keeping."""
        if envelope.type != "attestation":
            raise wire.WireError("not an attestation")
        if envelope.signer_peer_id == envelope.message.worker:
            raise wire.WireError("a worker cannot attest its own result")
        if self.node.chain_view is not None and not self.node.peer_is_staked(envelope.signer_peer_id):
            raise wire.WireError("attestation by a peer that is not staked")


def _clip(value: float) -> float:
    return max(min(float(value), 1e9), -1e9)
