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
from collections.abc import Awaitable, Callable, Sequence
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
JOB_LEVEL_CODES = frozenset({"max_tokens", "context_overflow", "invalid_prompt", "busy", "replay", "expired",
                             "not_yet_valid", "ttl_too_long", "model_mismatch"})


class AttemptFailed(Exception):
    """One worker did not deliver; the gateway tries the next."""


class ClientGone(Exception):
    """The client stopped listening: stop routing, nobody is waiting."""


@dataclass
class Admitted:
    """A job a gateway took (recorded, its worst-case charge reserved) and how to route it."""

    envelope: wire.Envelope
    data: bytes
    plan: Plan
    reserved: int  # wei
    started: float  # perf_counter() at admission


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

    async def route(self, job_id: str, plan: Plan, attempt: Attempt, relay: Relay, *,
                    job: wire.JobRequest | None = None) -> Routed:
        """Try workers in plan order until one returns a valid, signed result for job ``job_id``.

        Every attempt is checked as it goes, since a worker is a peer like any other:
        its tokens before they are relayed (:func:`check_tokens`), its result before it
        is accepted (:func:`check_result`).  A worker that breaks a rule is failed over
        like one that went away, and the next continues after the tokens the client has.

        Args:   job: the client's request, whose model the result must name and whose
                     ``max_tokens`` no streamed token may reach (the node always passes it;
                     without it only the job id, signer, prefix and stream are checked).
                attempt: runs the job on one peer, continuing after ``prefix`` (token ids).
                relay: forwards tokens to the client; raises ClientGone once it has left.
        Returns: Routed: the signed result and one record per worker tried.
        Raises: JobRejected: every worker refused for one reason (that code), else "no_worker".
                ClientGone: the client left (a remote worker cannot know that: its "cancelled"
                is a failure).
        """
        max_tokens = job.params.max_tokens if job is not None else wire.MAX_TOKENS_LIMIT
        delivered: list[wire.Token] = []
        workers: list[dict] = []
        codes: set[str] = set()
        for peer_id in plan.order[: self.max_attempts]:
            prefix = [t.id for t in delivered]
            from_this: list[wire.Token] = []
            broken: list[AttemptFailed] = []  # the rule this attempt's stream broke, if it did

            async def forward(tokens: list[wire.Token], prefix=prefix, from_this=from_this, broken=broken) -> None:
                try:
                    check_tokens(tokens, prefix=len(prefix), streamed=len(from_this), max_tokens=max_tokens)
                except AttemptFailed as rule:
                    broken.append(rule)  # the local engine reports a failed relay as "cancelled"
                    raise
                from_this.extend(tokens)
                delivered.extend(tokens)
                await relay(tokens)

            self.inflight[peer_id] += 1
            try:
                data, envelope = await attempt(peer_id, prefix, forward)
                check_result(envelope, job_id=job_id, model_sha256=job.model.sha256 if job is not None else None,
                             worker=peer_id, prefix=prefix, streamed=[t.id for t in from_this])
            except (AttemptFailed, JobRejected) as failure:
                exc = broken[0] if broken else failure
                if isinstance(exc, JobRejected) and exc.code == "cancelled":
                    if peer_id == self.self_id:  # our own engine stopped because relaying to the client failed
                        raise ClientGone() from None
                    exc = AttemptFailed(f"worker says cancelled, but this gateway's client is still here "
                                        f"({exc.message})")
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
                if isinstance(exc, JobRejected) and exc.code == "expired":  # nobody may run it now
                    raise JobRejected("expired", exc.message) from None
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


def check_tokens(tokens: Sequence[wire.Token], *, prefix: int, streamed: int, max_tokens: int) -> None:
    """Tokens a worker streams must continue the client's stream, checked before they are relayed.

    ``prefix``: tokens delivered before this attempt (the worker was asked to continue after
    them); ``streamed``: tokens this attempt already relayed.  Indices go up one at a time
    from ``prefix + streamed`` and stay below ``max_tokens``, so a worker that ignores the
    prefix (numbers from 0), skips or repeats a token, or runs past the job's limit never
    puts a token in front of the client that no honest continuation could sign.

    Raises: AttemptFailed, naming the first bad index.
    """
    for offset, token in enumerate(tokens):
        due = prefix + streamed + offset
        if token.index != due:
            raise AttemptFailed(f"streamed token {token.index} where {due} was due (after a prefix of {prefix} "
                                f"and {streamed + offset} streamed)")
        if token.index >= max_tokens:
            raise AttemptFailed(f"streamed token {token.index} is beyond the job's max_tokens ({max_tokens})")


def check_result(envelope: wire.Envelope, *, job_id: str, model_sha256: str | None, worker: str,
                 prefix: Sequence[int], streamed: Sequence[int]) -> None:
    """A worker's answer must be the result of this attempt, or the attempt failed.

    It must be a ``result`` for ``job_id``, signed by ``worker`` (the peer asked) and naming
    it, for the job's model (``model_sha256``; None: not checked); its output must begin with ``prefix`` (token
    ids delivered before this attempt) with ``continued_from == len(prefix)``, and the rest
    must be exactly ``streamed`` (the ids this attempt relayed).  So the client, which checks
    the same, always gets a result it accepts, and a worker cannot pass off another job's,
    another key's or another model's output.

    Raises: AttemptFailed, saying which rule the result broke.
    """
    if envelope.type != "result":
        raise AttemptFailed(f"expected a result, got a {envelope.type}")
    result: wire.JobResult = envelope.message
    if result.job_id != job_id:
        raise AttemptFailed(f"result for another job ({result.job_id[:16]}…)")
    if envelope.signer_peer_id != worker or result.worker != worker:
        raise AttemptFailed(f"result not signed by the worker asked (signed by {envelope.signer_peer_id}, "
                            f"naming {result.worker})")
    if model_sha256 is not None and result.model.sha256 != model_sha256:
        raise AttemptFailed(f"result names another model ({result.model.sha256[:12]}…, not {model_sha256[:12]}…)")
    if result.continued_from != len(prefix) or list(result.output_tokens[: len(prefix)]) != list(prefix):
        raise AttemptFailed(f"result does not continue the prefix of {len(prefix)} delivered tokens "
                            f"(continued_from {result.continued_from})")
    if list(result.output_tokens[len(prefix):]) != list(streamed):
        raise AttemptFailed("result differs from the streamed tokens")
