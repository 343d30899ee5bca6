"""The gateway role: admit a client's job, run it on the best worker, fail over, keep one stream.

:class:`Gateway` serves ``/inferad/submit`` (and ``submit`` on the control
socket, and the HTTP API's jobs): it admits a job (:meth:`Gateway.admit`:
clock, model, prompt, context, eligible workers, replay, deposit), routes it
(:meth:`Gateway.run_admitted`), stores the worker-signed result before it
answers, and hands the delivered result to verification.

The scheduler (pure) says who to try; :class:`Router` tries them in order.  A
worker that fails before its first token is replaced silently; one that dies
mid-stream is replaced by a worker that continues from the tokens already
delivered (prompt + those tokens), so the client sees one coherent stream and
the signed result covers all of it.  An attempt runs on this node's own
engine (:class:`inferad.worker.ExecService`) or over ``/inferad/exec``
(:meth:`Gateway.attempt_remote`).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from inferad.admission import JobRejected, check_delivery, check_model, now_ms
from inferad.billing import Billing
from inferad.config import Config
from inferad.engine import EngineError, check_vocabulary
from inferad.membership import Dialer
from inferad.metrics import Metrics
from inferad.service import Activity
from inferad.store import AsyncStore
from inferad.worker import ExecService, check_timing_now
from p2p import wire
from p2p.mesh import PROTOCOL_EXEC
from p2p.streams import FramedStream, StreamClosed
from scheduler.peers import Backoff, PeerTable
from scheduler.ranking import Candidate, JobShape, Plan, estimate_prompt_tokens, rank_candidates
from scheduler.speeds import SpeedChecks, claimed_stream_speed

log = logging.getLogger("inferad.gateway")

Relay = Callable[[list[wire.Token]], Awaitable[None]]
# (peer id, prefix token ids, relay) -> (signed result bytes, its envelope)
Attempt = Callable[[str, list[int], Relay], Awaitable[tuple[bytes, wire.Envelope]]]
# (job id, signed job, signed result): what happens to a delivered result (verification's draw)
Follow = Callable[[str, bytes, bytes], Awaitable[None]]


# Refusals about the job, not the worker: try the next worker, but do not back off.
JOB_LEVEL_CODES = frozenset({"max_tokens", "context_overflow", "invalid_prompt", "busy", "replay", "expired",
                             "not_yet_valid", "ttl_too_long", "model_mismatch", "too_many_choices"})


# A worker this gateway never reached ranks as if it answered at once: it gets tried, and from then
# on ranks by its measured round trip.  A pessimistic guess starved it instead: with free slots
# everywhere, the better of two random candidates always beat the one never measured.
UNMEASURED_RTT_S = 0.0


class AttemptFailed(Exception):
    """One worker did not deliver; the gateway tries the next."""


class RelayLost(AttemptFailed):
    """The relay a worker was reached through went away mid-job: the worker may be reached
    another way (another relay, or directly), so it is tried once more, continuing."""


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
        self.speeds = SpeedChecks()  # what this gateway measured of each worker, against its adverts

    def record_rtt(self, peer_id: str, seconds: float) -> None:
        old = self.rtt_s.get(peer_id)
        self.rtt_s[peer_id] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def candidates(self, key: str, now: float, local: Candidate | None) -> list[Candidate]:
        """Who can run a job on ``key`` (``wire.served_key``: a model, or a model with an adapter)."""
        found = [] if local is None else [local]
        for entry in self.peers.providers(key, now):
            if entry.peer_id == self.self_id:
                continue
            ad = entry.advert
            offer = ad.offers(key)
            found.append(Candidate(
                peer_id=ad.peer_id, tokens_per_s=self.speeds.speed(ad.peer_id, offer.tokens_per_s),
                n_ctx=offer.n_ctx,
                queued=ad.load.queued, running=ad.load.running, slots=ad.load.slots,
                capacity=ad.load.capacity, inflight=self.inflight[ad.peer_id],
                rtt_s=self.rtt_s.get(ad.peer_id, UNMEASURED_RTT_S), staked=self.is_staked(ad),
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
        choices = job.params.n if job is not None else 1
        delivered: list[wire.Token] = []
        workers: list[dict] = []
        codes: set[str] = set()
        queue = deque(plan.order[: self.max_attempts])
        rerouted: set[str] = set()  # workers tried again over another path after their relay went away
        while queue:
            peer_id = queue.popleft()
            if delivered and choices > 1:  # a continuation carries one choice's prefix
                raise JobRejected("no_worker", f"worker {workers[-1]['peer'][-8:]} failed after streaming "
                                               f"{len(delivered)} tokens of {choices} choices, and a job with several "
                                               f"choices is not continued by another worker: submit it again")
            prefix = [t.id for t in delivered]
            from_this: list[wire.Token] = []
            broken: list[AttemptFailed] = []  # the rule this attempt's stream broke, if it did
            arrivals: list[tuple[float, int]] = []  # (perf_counter s, tokens) of each batch
            claimed = self._claimed_speed(peer_id, job)

            async def forward(tokens: list[wire.Token], prefix=prefix, from_this=from_this, broken=broken,
                              arrivals=arrivals) -> None:
                try:
                    check_tokens(tokens, prefix=len(prefix), streamed=from_this, max_tokens=max_tokens,
                                 choices=choices)
                except AttemptFailed as rule:
                    broken.append(rule)  # the local engine reports a failed relay as "cancelled"
                    raise
                arrivals.append((time.perf_counter(), len(tokens)))
                from_this.extend(tokens)
                delivered.extend(tokens)
                await relay(tokens)

            self.inflight[peer_id] += 1
            try:
                data, envelope = await attempt(peer_id, prefix, forward)
                check_result(envelope, job_id=job_id, job=job, worker=peer_id, prefix=prefix, streamed=from_this)
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
                if isinstance(exc, RelayLost) and peer_id not in rerouted:
                    rerouted.add(peer_id)
                    queue.appendleft(peer_id)
                    log.info("the relay to worker %s went away after %d tokens: continuing over another path",
                             peer_id[-8:], len(from_this))
                elif code in JOB_LEVEL_CODES or peer_id == self.self_id:
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
            self._measure(peer_id, claimed, arrivals)
            workers.append({"peer": peer_id, "tokens": len(from_this), "outcome": "ok"})
            return Routed(data, envelope, workers)
        tried = "; ".join(f"{w['peer'][-8:]}: {w['outcome']}" for w in workers) or "none"
        # Every worker refused for the same reason (max_tokens, context_overflow…): say that.
        code = codes.pop() if len(codes) == 1 and "failed" not in codes else "no_worker"
        raise JobRejected(code, f"no worker could run the job. Tried: {tried}. Excluded: {plan.explain()}")


    def _claimed_speed(self, peer_id: str, job: wire.JobRequest | None) -> float:
        """The per-stream tokens/s ``peer_id``'s advert claims for one more job now (0: unknown)."""
        entry = self.peers.get(peer_id)
        offer = entry.advert.offers(job.served_key) if entry is not None and job is not None else None
        if peer_id == self.self_id or offer is None:
            return 0.0
        load = entry.advert.load
        return claimed_stream_speed(offer.tokens_per_s, load.running, load.tokens_per_s)

    def _measure(self, peer_id: str, claimed: float, arrivals: list[tuple[float, int]]) -> None:
        """Hold the speed a worker streamed at against the speed it claimed (scheduler.speeds)."""
        if claimed <= 0 or len(arrivals) < 2:
            return
        tokens = sum(n for _, n in arrivals[1:])  # the clock starts at the first batch
        if self.speeds.observe(peer_id, claimed=claimed, tokens=tokens, seconds=arrivals[-1][0] - arrivals[0][0]):
            log.warning("worker %s claims %.0f tokens/s but streamed %.1f: ranked by the measured speed "
                        "(%d overclaim(s))", peer_id[-8:], claimed, self.speeds.measured[peer_id],
                        self.speeds.overclaims[peer_id])


def check_tokens(tokens: Sequence[wire.Token], *, prefix: int, streamed: Sequence[wire.Token], max_tokens: int,
                 choices: int = 1) -> None:
    """Tokens a worker streams must continue the client's stream, checked before they are relayed.

    ``prefix``: tokens delivered before this attempt (the worker was asked to continue after
    them); ``streamed``: the tokens this attempt already relayed.  Each of the job's ``choices``
    numbers its tokens from 0 (choice 0 from ``prefix``), one at a time and below
    ``max_tokens``, so a worker that ignores the prefix (numbers from 0), skips or repeats a
    token, invents a choice or runs past the job's limit never puts a token in front of the
    client that no honest continuation could sign.

    Raises: AttemptFailed, naming the first bad token.
    """
    counts = Counter(t.choice for t in streamed)
    for token in tokens:
        if token.choice >= choices:
            raise AttemptFailed(f"streamed a token of choice {token.choice}; the job has {choices} choice(s)")
        earlier = counts[token.choice]
        due = earlier + (prefix if token.choice == 0 else 0)
        if token.index != due:
            raise AttemptFailed(f"streamed token {token.index} of choice {token.choice} where {due} was due (after "
                                f"a prefix of {prefix} and {earlier} streamed)")
        if token.index >= max_tokens:
            raise AttemptFailed(f"streamed token {token.index} is beyond the job's max_tokens ({max_tokens})")
        counts[token.choice] += 1


def check_result(envelope: wire.Envelope, *, job_id: str, job: wire.JobRequest | None, worker: str,
                 prefix: Sequence[int], streamed: Sequence[wire.Token]) -> None:
    """A worker's answer must be the result of this attempt, or the attempt failed.

    It must be a ``result`` for ``job_id``, signed by ``worker`` (the peer asked) and naming
    it; with ``job``, for its model and with its ``params.n`` choices.  Its output must begin
    with ``prefix`` (token ids delivered before this attempt) with ``continued_from ==
    len(prefix)``, and the rest must be exactly ``streamed`` (the tokens this attempt
    relayed, by choice, log-probabilities included).  So the client, which checks the same,
    always gets a result it accepts, and a worker cannot pass off another job's, another
    key's or another model's output.

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
    if job is not None and result.model.sha256 != job.model.sha256:
        raise AttemptFailed(f"result names another model ({result.model.sha256[:12]}…, not {job.model.sha256[:12]}…)")
    if job is not None and len(result.all_choices()) != job.params.n:
        raise AttemptFailed(f"result has {len(result.all_choices())} choice(s); the job asked for {job.params.n}")
    if result.continued_from != len(prefix) or list(result.output_tokens[: len(prefix)]) != list(prefix):
        raise AttemptFailed(f"result does not continue the prefix of {len(prefix)} delivered tokens "
                            f"(continued_from {result.continued_from})")
    mismatch = wire.stream_mismatch(result, streamed, len(prefix))
    if mismatch:
        raise AttemptFailed(mismatch)


@dataclass(kw_only=True, eq=False)
class Gateway:
    """Takes client-signed jobs and sees each through to a stored, worker-signed result.

    Args:   key: this node's signing key (exec requests are signed with it).
            config: limits and timeouts (connect, first token, stall).
            peers: the advert table.
            router: orders and tries the workers.
            store: the job records (replays refused, results stored before they are answered).
            billing: deposits reserved and released, stakes, the epoch index of served jobs.
            local: this node's own engines (None-like when it serves nothing: ``served`` empty).
            dialer: streams to remote workers.
            activity: counts running jobs, for a draining node.
            metrics: job outcomes, tokens and latency.
            follow: started for every delivered result (verification's draw), or None.
            spawn: starts a task in the node's nursery (``follow`` outlives the request).
    """

    key: Any
    config: Config
    peers: PeerTable
    router: Router
    store: AsyncStore
    billing: Billing
    local: ExecService
    dialer: Dialer
    activity: Activity
    metrics: Metrics
    follow: Follow | None
    spawn: Callable[..., None]

    def __post_init__(self) -> None:
        self.peer_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))

    async def serve(self, envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
        """Answer one client-signed ``job`` (``/inferad/submit``, or ``submit`` on the control socket):
        token frames as they come, then the worker-signed result."""
        async def relay(tokens: list[wire.Token]) -> None:
            try:
                await framed.send_tokens(tokens)
            except StreamClosed:
                raise ClientGone() from None

        try:
            routed = await self.route_job(envelope, data, relay)
        except ClientGone:
            return
        await framed.send(routed.data)

    async def route_job(self, envelope: wire.Envelope, data: bytes, relay: Relay) -> Routed:
        """As the job's gateway: admit, route and record a client-signed job.

        ``relay(tokens)`` gets the tokens as they come and raises ClientGone
        when the client left.  Returns once the worker-signed result is stored
        (acknowledged); raises JobRejected with a typed code otherwise.
        """
        return await self.run_admitted(await self.admit(envelope, data), relay)

    async def admit(self, envelope: wire.Envelope, data: bytes) -> Admitted:
        """Decide whether this gateway takes a job, before any token is promised to its client.

        Clock, model, prompt (tokens in the vocabulary, a chat the template can render),
        context, worker eligibility, replay and deposit: every refusal a client could fix
        is raised here as JobRejected.  An admitted job is recorded and its worst-case
        charge reserved: hand it to :meth:`run_admitted`, or to :meth:`abandon`.
        """
        job: wire.JobRequest = envelope.message
        started = time.perf_counter()
        job_id = envelope.digest
        check_timing_now(job, self.config)
        check_model(job.model)
        now = time.monotonic()
        local = self._local_candidate(job)
        candidates = self.router.candidates(job.served_key, now, local)
        if not candidates:
            with_adapter = f" with adapter {job.adapter.name} ({job.adapter.sha256[:12]}…)" if job.adapter else ""
            raise JobRejected("unknown_model", f"no node in this network serves {job.model.name} "
                                               f"({job.model.sha256[:12]}…){with_adapter}")
        prompt_tokens = self._prompt_size(job, local is not None, [c.peer_id for c in candidates])
        plan = self.router.plan(JobShape(prompt_tokens, job.params.max_tokens, job.params.n), candidates, now)
        if not plan.order:
            raise JobRejected(refusal_code(plan), f"no eligible worker for {job.model.name}: {plan.explain()}")
        if await self.store.has_job(job_id):
            raise JobRejected("replay", f"job {job_id[:16]}… was already submitted")
        reserved = await self.billing.reserve(job)
        if not await self.store.accept_job(job_id, data, role="gateway"):
            self.billing.release(job.client_eth, reserved)
            raise JobRejected("replay", f"job {job_id[:16]}… was already submitted")
        return Admitted(envelope, data, plan, reserved, started)

    def _local_candidate(self, job: wire.JobRequest) -> Candidate | None:
        served = self.local.served.get(job.served_key)
        if served is None:
            return None
        load = served.worker.load
        return Candidate(peer_id=self.peer_id, tokens_per_s=served.tokens_per_s, n_ctx=served.engine.n_ctx,
                         queued=load.queued, running=load.running, slots=load.slots, capacity=load.capacity,
                         rtt_s=0.0,
                         staked=self.billing.is_staked_self(), reputation=self.router.reputation_of(self.peer_id))

    def _prompt_size(self, job: wire.JobRequest, local: bool, candidates: list[str]) -> int:
        """Prompt tokens of a job: exact with the model at hand or token ids, else an estimate."""
        if local:
            return len(self.local.prompt_tokens(job))
        if job.prompt_tokens is not None:
            vocabularies = [offer.n_vocab for entry in map(self.peers.get, candidates) if entry is not None
                            for offer in [entry.advert.offers(job.served_key)] if offer and offer.n_vocab]
            if vocabularies:
                try:
                    check_vocabulary(job.prompt_tokens, min(vocabularies))
                except EngineError as exc:
                    raise JobRejected("invalid_prompt", str(exc)) from None
            return len(job.prompt_tokens)
        return estimate_prompt_tokens(len(job.prompt or "") + sum(len(m.content) for m in job.messages or ()))

    async def run_admitted(self, admitted: Admitted, relay: Relay) -> Routed:
        """Route an admitted job to its workers until one delivers a signed result (see route_job)."""
        envelope, data, job_id = admitted.envelope, admitted.data, admitted.envelope.digest
        job: wire.JobRequest = envelope.message

        async def attempt(peer_id: str, prefix: list[int], relay: Relay) -> tuple[bytes, wire.Envelope]:
            if peer_id == self.peer_id:
                signed = await self.local.execute(envelope, prefix, relay)
            else:
                signed = await self.attempt_remote(peer_id, data, prefix, relay)
            check_delivery(job, signed[1].message, now_ms=now_ms())  # never deliver after expiry
            return signed

        with self.activity.job():
            try:
                routed = await self.router.route(job_id, admitted.plan, attempt, relay, job=job)
            except (JobRejected, ClientGone) as exc:
                await self.abandon(admitted, exc.code if isinstance(exc, JobRejected) else "client_gone")
                raise
        await self.store.finish_job(job_id, routed.data, workers=routed.workers)
        if routed.workers[-1]["peer"] == self.peer_id:  # this node ran (the end of) the job itself
            await self.billing.record_served(job_id)
        if self.follow is not None:
            self.spawn(self.follow, job_id, data, routed.data)
        result: wire.JobResult = routed.envelope.message
        _log_job(job_id, job, outcome="ok", tokens=len(result.output_tokens),
                 workers=",".join(w["peer"][-8:] for w in routed.workers))
        self.metrics.job_done("ok", len(result.output_tokens) - result.continued_from,
                              time.perf_counter() - admitted.started)
        return routed

    async def abandon(self, admitted: Admitted, code: str) -> None:
        """An admitted job that will not be (or was not) delivered: release its charge, record why."""
        job: wire.JobRequest = admitted.envelope.message
        self.billing.release(job.client_eth, admitted.reserved)
        await self.store.fail_job(admitted.envelope.digest, code)
        _log_job(admitted.envelope.digest, job, outcome=code)
        self.metrics.job_done(code, 0, time.perf_counter() - admitted.started)

    async def attempt_remote(self, peer_id: str, job: bytes, prefix: list[int], relay: Relay) \
            -> tuple[bytes, wire.Envelope]:
        """One attempt over ``/inferad/exec``: the signed job (continuing after ``prefix``) to
        ``peer_id``, its tokens relayed in the batches the worker sent; its result.

        Raises: AttemptFailed (unreachable, stalled, gone, an invalid or unexpected frame),
        JobRejected (the worker's typed refusal), ClientGone (from ``relay``).
        """
        stream = await self._open_exec(peer_id)
        via_relay = self.dialer.connection(peer_id) == "relayed"
        framed = FramedStream(stream, self.config.max_frame)
        try:
            await framed.send(wire.sign(wire.ExecRequest(job=job, prefix=tuple(prefix)), self.key))
            got_token = False
            while True:
                limit = self.config.stall_timeout if got_token else self.config.first_token_timeout
                with trio.fail_after(limit):
                    first = await framed.receive()
                tokens: list[wire.Token] = []
                for data in [first, *framed.buffered_frames()]:  # a worker's batch: relay it in one write
                    envelope = wire.decode(data, max_size=self.config.max_frame)
                    if envelope.type == "token":
                        tokens.append(envelope.message)
                        continue
                    if tokens:
                        await relay(tokens)
                        tokens = []
                    if envelope.type == "error":
                        raise JobRejected(envelope.message.code, envelope.message.message)
                    if envelope.type == "result":
                        return data, envelope
                    raise AttemptFailed(f"worker sent an unexpected {envelope.type}")
                if tokens:
                    got_token = True
                    await relay(tokens)
        except trio.TooSlowError:
            raise AttemptFailed("worker stalled") from None
        except StreamClosed as exc:
            raise (RelayLost if via_relay else AttemptFailed)(f"worker went away: {exc}") from None
        except wire.WireError as exc:
            raise AttemptFailed(f"worker sent an invalid frame: {exc}") from None
        finally:
            await framed.close()

    async def _open_exec(self, peer_id: str) -> Any:
        """An ``/inferad/exec`` stream to ``peer_id``, retried for ``connect_timeout`` s (a dial
        racing the peer's own dial to us can lose both connections); the RTT goes to the router."""
        error = None
        with trio.move_on_after(self.config.connect_timeout):
            for retry in range(3):
                try:
                    await self.dialer.connect(peer_id)
                    started = time.perf_counter()
                    stream = await self.dialer.new_stream(peer_id, PROTOCOL_EXEC)
                    self.router.record_rtt(peer_id, time.perf_counter() - started)
                    return stream
                except Exception as exc:
                    error = exc
                    await trio.sleep(0.1 * (retry + 1))
        reason = f"{type(error).__name__}: {error}" if error else f"timed out after {self.config.connect_timeout} s"
        raise AttemptFailed(f"cannot reach worker ({reason})")


def refusal_code(plan: Plan) -> str:
    """The code for a job no worker is eligible for: the client's own mistake when every worker
    that could run jobs now refuses it for one (its context), else what they share, else no_worker.
    Unstaked, backed-off and distrusted workers take no jobs anyway: they do not hide the mistake."""
    codes = {code for code, _ in plan.excluded.values()}
    for mistake in ("context_overflow", "too_many_choices"):
        if mistake in codes and codes <= {mistake, "unstaked", "backoff", "reputation"}:
            return mistake
    common = plan.common_code()
    return common if common in ("busy", "unstaked") else "no_worker"


def _log_job(job_id: str, job: wire.JobRequest, **fields: Any) -> None:
    log.info("job", extra={"fields": {"id": job_id[:16], "model": job.model.name, **fields}})
