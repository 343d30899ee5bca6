"""The gateway role: run a client's job on the best worker, fail over, keep one stream.

The scheduler (pure) says who to try; this module tries them in order.  A
worker that fails before its first token is replaced silently; one that dies
mid-stream is replaced by a worker that continues from the tokens already
delivered (prompt + those tokens), so the client sees one coherent stream and
the signed result covers all of it.  How an attempt reaches a worker (locally,
or over ``/inferad/exec``) is the node's business: it passes ``attempt``.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from inferad.admission import JobRejected
from p2p import wire
from scheduler.peers import Backoff, PeerTable
from scheduler.ranking import Candidate, JobShape, Plan, rank_candidates

log = logging.getLogger("inferad.gateway")

Relay = Callable[[list[wire.Token]], Awaitable[None]]
# (peer id, prefix token ids, relay) -> (signed result bytes, its envelope)
Attempt = Callable[[str, list[int], Relay], Awaitable[tuple[bytes, wire.Envelope]]]


# Refusals about the job, not the worker: try the next worker, but do not back off.
JOB_LEVEL_CODES = frozenset({"max_tokens", "context_overflow", "unsupported", "busy", "replay", "expired",
                             "not_yet_valid", "ttl_too_long"})


class AttemptFailed(Exception):
    """One worker did not deliver; the gateway tries the next."""


class ClientGone(Exception):
    """The client stopped listening: stop routing, nobody is waiting."""


@dataclass
class Routed:
    data: bytes  # the final worker-signed result
    envelope: wire.Envelope
    workers: list[dict] = field(default_factory=list)  # every worker tried: peer, tokens, outcome


class Router:
    def __init__(self, self_id: str, peers: PeerTable, *, max_attempts: int = 4,
                 reputation_floor: float = 0.0, rng: random.Random | None = None,
                 is_staked: Callable[[wire.Advert], bool] = lambda advert: True,
                 reputation_of: Callable[[str], float] = lambda peer_id: 0.5) -> None:
        self.self_id = self_id
        self.is_staked = is_staked
        self.reputation_of = reputation_of
        self.peers = peers
        self.backoff = Backoff()
        self.max_attempts = max_attempts
        self.reputation_floor = reputation_floor
        self.rng = rng or random.Random()
        self.inflight: Counter[str] = Counter()
        self.rtt_s: dict[str, float] = {}

    def record_rtt(self, peer_id: str, seconds: float) -> None:
        old = self.rtt_s.get(peer_id)
        self.rtt_s[peer_id] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def candidates(self, model_sha256: str, now: float, local: Candidate | None) -> list[Candidate]:
        found = [] if local is None else [local]
        for entry in self.peers.providers(model_sha256, now):
            if entry.peer_id == self.self_id:
                continue
            ad = entry.advert
            offer = ad.offers(model_sha256)
            found.append(Candidate(
                peer_id=ad.peer_id, tokens_per_s=offer.tokens_per_s, n_ctx=offer.n_ctx,
                queued=ad.load.queued, running=ad.load.running,
                capacity=ad.load.capacity, inflight=self.inflight[ad.peer_id],
                rtt_s=self.rtt_s.get(ad.peer_id, 0.005), staked=self.is_staked(ad),
                reputation=self.reputation_of(ad.peer_id),
            ))
        return found

    def plan(self, shape: JobShape, candidates: list[Candidate], now: float) -> Plan:
        return rank_candidates(shape, candidates, rng=self.rng, backed_off=self.backoff.active(now),
                               reputation_floor=self.reputation_floor)

    async def route(self, job_id: str, plan: Plan, attempt: Attempt, relay: Relay) -> Routed:
        delivered: list[wire.Token] = []
        workers: list[dict] = []
        codes: set[str] = set()
        for peer_id in plan.order[: self.max_attempts]:
            prefix = [t.id for t in delivered]
            from_this: list[wire.Token] = []

            async def forward(tokens: list[wire.Token], from_this=from_this) -> None:
                from_this.extend(tokens)
                delivered.extend(tokens)
                await relay(tokens)

            self.inflight[peer_id] += 1
            try:
                data, envelope = await attempt(peer_id, prefix, forward)
                _check_result(envelope, job_id, peer_id, prefix, from_this)
            except (AttemptFailed, JobRejected) as exc:
                if isinstance(exc, JobRejected) and exc.code == "cancelled":
                    raise ClientGone() from None
                reason = f"{exc.code}: {exc.message}" if isinstance(exc, JobRejected) else str(exc)
                code = exc.code if isinstance(exc, JobRejected) else "failed"
                codes.add(code)
                workers.append({"peer": peer_id, "tokens": len(from_this), "outcome": reason})
                if code in JOB_LEVEL_CODES or peer_id == self.self_id:
                    log.info("worker %s refused the job (%s)", peer_id[-8:], reason)
                else:
                    delay = self.backoff.failed(peer_id, time.monotonic())
                    log.warning("worker %s failed after %d tokens (%s); backing off %.0f s", peer_id[-8:],
                                len(from_this), reason, delay)
                continue
            finally:
                self.inflight[peer_id] -= 1
            self.backoff.succeeded(peer_id)
            workers.append({"peer": peer_id, "tokens": len(from_this), "outcome": "ok"})
            return Routed(data, envelope, workers)
        tried = "; ".join(f"{w['peer'][-8:]}: {w['outcome']}" for w in workers) or "none"
        # Every worker refused for the same reason (max_tokens, context_overflow…): say that.
        code = codes.pop() if len(codes) == 1 and "failed" not in codes else "no_worker"
        raise JobRejected(code, f"no worker could run the job. Tried: {tried}. Excluded: {plan.explain()}")


def _check_result(envelope: wire.Envelope, job_id: str, peer_id: str, prefix: list[int],
                  streamed: list[wire.Token]) -> None:
    """A worker's result must be for this job, by this worker, extend the prefix
    it was given and match what it streamed; else it counts as a failure."""
    result: wire.JobResult = envelope.message
    if envelope.type != "result" or result.job_id != job_id:
        raise AttemptFailed("result for another job")
    if envelope.signer_peer_id != peer_id or result.worker != peer_id:
        raise AttemptFailed("result not signed by the worker asked")
    if list(result.output_tokens[: len(prefix)]) != prefix or result.continued_from != len(prefix):
        raise AttemptFailed("result does not continue the delivered tokens")
    if list(result.output_tokens[len(prefix):]) != [t.id for t in streamed]:
        raise AttemptFailed("result differs from the streamed tokens")
