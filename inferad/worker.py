"""The worker role: the engines this node serves, their queues, and ``/inferad/exec``.

:func:`load_models` opens an engine per configured model (llama.cpp, or the
simulated engine for scale tests) and measures its speed.  A :class:`Worker`
runs admitted jobs on one engine from trio, a slot each, with a bounded
queue: llama.cpp generates in the engine's thread; tokens come back to trio
through an unbounded channel (bounded in practice by ``max_tokens``), so the
thread never blocks on a slow client, and a client that goes away stops the
generation at the next token.  :class:`ExecService` is what a gateway talks
to: it checks a client-signed job, runs it (continuing after the tokens a
failed worker already delivered), signs the result and records it before
sending it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from inferad.admission import (
    JobRejected,
    check_client_eth,
    check_context,
    check_served,
    check_signing,
    check_timing,
    now_ms,
)
from inferad.config import Config
from inferad.engine import NO_JOB, Engine, EngineError, Generation, GenerationCancelled
from inferad.model_cache import local_model
from inferad.models import ModelError, check_label, naming_note
from inferad.sim import SimEngine
from inferad.speed import cache_key, follow, moved, remember, tokens_per_second
from inferad.store import AsyncStore
from p2p import wire
from p2p.streams import FramedStream

log = logging.getLogger("inferad.worker")

SendTokens = Callable[[list[wire.Token]], Awaitable[None]]
T = TypeVar("T")


class Worker:
    """The queue in front of one engine: at most ``engine.n_slots`` jobs run at once (each in a slot
    of the engine's batch), ``queue_size`` more wait, the rest are refused ``busy``.

    Each running job holds a thread blocked on its engine task (:meth:`Engine.generate`), from a
    limiter of one thread per slot, so the jobs never take the threads trio's other work uses.
    """

    def __init__(self, engine: Engine, *, queue_size: int, batch_ms: int = 0) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.batch_s = batch_ms / 1000
        self.slots = getattr(engine, "n_slots", 1)
        self._limiter = trio.CapacityLimiter(self.slots)  # a slot each
        self._threads = trio.CapacityLimiter(self.slots)  # a thread waits on each slot's task
        self._waiting = 0
        self.meter = RateMeter()

    @property
    def load(self) -> wire.Load:
        return wire.Load(queued=self._waiting, running=self._limiter.borrowed_tokens,
                         capacity=self.slots + self.queue_size, slots=self.slots,
                         tokens_per_s=round(self.meter.rate(time.monotonic()), 2))

    async def run(self, prompt: list[int], params: wire.SamplingParams, send_tokens: SendTokens,
                  prefix: list[int] | None = None, *, job_id: str = NO_JOB) -> tuple[Generation, int]:
        """Generate job ``job_id`` (whose public draws a sampled job uses), streaming tokens through
        ``send_tokens``; returns (generation, queue ms).

        The first token goes out at once; later ones are sent in batches
        gathered over ``batch_ms``, which saves the network stack (and the
        CPU cores llama.cpp shares with it) one write per token.

        Raises JobRejected("busy") when ``queue_size`` jobs already wait.
        """
        if not self._limiter.available_tokens and self._waiting >= self.queue_size:
            raise JobRejected("busy", f"all {self.slots} slot(s) are running and {self._waiting} jobs are already "
                                      f"waiting; retry later")
        queued_at = time.perf_counter()
        async with self._turn():
            queue_ms = int((time.perf_counter() - queued_at) * 1000)
            return await self._generate(prompt, params, send_tokens, prefix or [], job_id), queue_ms

    async def run_in_slot(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` (a re-scoring: :meth:`Engine.score`) in a thread while it holds a
        slot: verifications queue with jobs and run in the same batches."""
        async with self._turn():
            return await trio.to_thread.run_sync(fn, limiter=self._threads)

    @contextlib.asynccontextmanager
    async def _turn(self):
        """Wait in the queue (counted in the advertised load), then hold a slot."""
        self._waiting += 1
        try:
            await self._limiter.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._limiter.release()

    async def _generate(self, prompt: list[int], params: wire.SamplingParams, send_tokens: SendTokens,
                        prefix: list[int], job_id: str) -> Generation:
        send, receive = trio.open_memory_channel(math.inf)
        stop = threading.Event()
        trio_token = trio.lowlevel.current_trio_token()

        def deliver(token: wire.Token) -> None:  # runs in trio; must not raise
            self.meter.add(1, time.monotonic())
            try:
                send.send_nowait(token)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stop.set()

        def on_token(token: wire.Token) -> bool:
            # Fire and forget: the llama.cpp thread never waits for the event loop.
            try:
                trio_token.run_sync_soon(deliver, token)
            except trio.RunFinishedError:
                return False
            return not stop.is_set()

        async def forward() -> None:
            try:
                first_batch = True
                async for first in receive:
                    if not first_batch and self.batch_s:
                        await trio.sleep(self.batch_s)
                    first_batch = False
                    batch = [first]
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while True:
                            batch.append(receive.receive_nowait())
                    await send_tokens(batch)
            except Exception as exc:  # the consumer failed (client gone): stop, report below
                log.debug("token consumer failed: %r", exc)
            finally:
                stop.set()
                receive.close()

        generation = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                generation = await trio.to_thread.run_sync(
                    functools.partial(self.engine.generate, prompt, params, on_token, prefix, cancelled=stop.is_set,
                                      job_id=job_id),
                    limiter=self._threads)
            except GenerationCancelled:
                pass
            finally:
                send.close()
        if generation is None:
            raise JobRejected("cancelled", "generation stopped: the client went away")
        return generation


class RateMeter:
    """Tokens per second over the last ``window_s`` seconds of output: what an engine delivers at
    its current concurrency (every slot's tokens together).  0 while fewer than two tokens fall
    in the window, so an idle engine claims nothing it has not just shown."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()  # (monotonic s, tokens)

    def add(self, tokens: int, now: float) -> None:
        self._events.append((now, tokens))

    def rate(self, now: float) -> float:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        if len(self._events) < 2:
            return 0.0
        span = self._events[-1][0] - self._events[0][0]
        # the first event's tokens came before the span began
        return (sum(n for _, n in self._events) - self._events[0][1]) / span if span > 0 else 0.0


class ModelUnusable(Exception):
    """A configured model cannot be served; the message names it and says why."""


@dataclass
class Served:
    """One model this node serves: its engine, the queue in front of it, its measured speed."""

    engine: Any  # Engine | SimEngine
    worker: Worker
    tokens_per_s: float  # one stream alone (inferad.speed)
    speed_key: str = ""  # its entry in the speed cache

    def __post_init__(self) -> None:
        self.cached_tokens_per_s = self.tokens_per_s  # the figure last written to the cache

    def describe(self) -> dict:
        """``{name, sha256, adapter}``: the model (and LoRA adapter's sha256, or None) as
        ``inferad status`` and the node-info file name it."""
        ref, adapter = self.engine.ref, self.engine.adapter_ref
        return {"name": ref.name, "sha256": ref.sha256, "adapter": adapter.sha256 if adapter else None}

    async def observed(self, generation: Generation, new_tokens: int) -> None:
        """A job's stream speed, ``new_tokens`` long: when no other job ran beside it, moves
        ``tokens_per_s`` toward it (:func:`inferad.speed.follow`), and the cache once it moved 10 %."""
        if not self.speed_key or self.worker.load.running:
            return
        self.tokens_per_s = follow(self.tokens_per_s, generation.tokens_per_second, new_tokens)
        if moved(self.tokens_per_s, self.cached_tokens_per_s):
            log.info("%s streams %.1f tokens/s alone lately (%.1f before): advertising that",
                     self.engine.ref.name, self.tokens_per_s, self.cached_tokens_per_s)
            self.cached_tokens_per_s = self.tokens_per_s
            await trio.to_thread.run_sync(remember, self.speed_key, self.tokens_per_s)


async def load_models(config: Config, hardware: wire.Hardware, *, engine: str = "llama",
                      sim_tokens_per_s: float = 50.0, skip: tuple[str, ...] = ()) -> dict[str, Served]:
    """Open an engine for each of ``config.models`` (but ``skip``), and one for the model with each
    of ``config.adapters`` (LoRA, applied to the one model), and measure their speed; by
    ``wire.served_key``.

    ``engine`` is ``llama`` (llama.cpp) or ``sim`` (the simulated engine, at ``sim_tokens_per_s``).
    Raises ModelUnusable for a model that cannot be found, assembled or loaded (the engines
    opened before it are closed).
    """
    if config.adapters and len(config.models) != 1:
        raise ModelUnusable(f"adapters apply to one model; {len(config.models)} are configured (engine.models)")
    pairs = [(spec, None) for spec in config.models if spec not in skip]
    pairs += [(config.models[0], adapter) for adapter in config.adapters if config.models[0] not in skip]
    served: dict[str, Served] = {}
    for spec, adapter in pairs:
        try:
            opened = await open_model(spec, config, hardware, engine=engine, sim_tokens_per_s=sim_tokens_per_s,
                                      adapter=adapter)
        except ModelUnusable:
            for each in served.values():
                each.engine.close()
            raise
        served[opened.engine.key] = opened
    return served


async def open_model(spec: str, config: Config, hardware: wire.Hardware, *, engine: str = "llama",
                     sim_tokens_per_s: float = 50.0, adapter: str | None = None) -> Served:
    """An engine for ``spec`` (a catalog name, a GGUF path, or a cached model's ``sha256:…``
    reference: :meth:`inferad.model_cache.ModelCache.find`), with the LoRA ``adapter`` (a GGUF
    path or a cached ``sha256:…``) if given, its speed measured.  Raises ModelUnusable."""
    try:
        if engine == "sim":
            opened = SimEngine(spec, tokens_per_s=sim_tokens_per_s, n_ctx=config.n_ctx)
        else:
            model = await trio.to_thread.run_sync(local_model, spec)
            lora = await trio.to_thread.run_sync(local_model, adapter) if adapter else None
            for each in (model, lora):
                if each is not None:
                    check_label(each.name, each.sha256)  # holds for resolve's labels (models.file_label)
                    if note := naming_note(each):
                        log.warning("%s", note)
            log.info("loading %s with llama.cpp (%s)…", model.name, model.path)
            opened = await trio.to_thread.run_sync(
                lambda: Engine(model, n_ctx=config.n_ctx, n_threads=config.n_threads,
                               n_gpu_layers=config.n_gpu_layers, n_slots=config.parallel, adapter=lora,
                               batch_invariant=config.batch_invariant))
        key = cache_key(opened, hardware, threads=config.n_threads)
        speed = await trio.to_thread.run_sync(tokens_per_second, opened, key)
    except (ModelError, EngineError, ValueError) as exc:
        raise ModelUnusable(f"cannot serve model {spec}{f' with adapter {adapter}' if adapter else ''}: {exc}") \
            from None
    worker = Worker(opened, queue_size=config.queue_size, batch_ms=config.stream_batch_ms)
    return Served(opened, worker, speed, key if engine != "sim" else "")


def offers(served: dict[str, Served]) -> tuple[wire.ModelOffer, ...]:
    """The models and (model, adapter) pairs of ``served`` as an advert offers them."""
    return tuple(wire.ModelOffer(sha256=s.engine.ref.sha256, name=s.engine.ref.name,
                                 tokens_per_s=float(s.tokens_per_s), n_ctx=s.engine.n_ctx, n_vocab=s.engine.n_vocab,
                                 adapter=s.engine.adapter_ref.sha256 if s.engine.adapter_ref else None)
                 for s in served.values())


def total_load(served: dict[str, Served]) -> wire.Load:
    """The load of every engine in ``served``, summed (what an advert says)."""
    loads = [s.worker.load for s in served.values()]
    return wire.Load(queued=sum(x.queued for x in loads), running=sum(x.running for x in loads),
                     capacity=sum(x.capacity for x in loads), slots=max(sum(x.slots for x in loads), 1),
                     tokens_per_s=sum(x.tokens_per_s for x in loads))



@dataclass(kw_only=True, eq=False)
class ExecService:
    """Runs jobs on this node's engines: for gateways over ``/inferad/exec``, and for its own.

    Args:   key: this node's signing key (results are signed with it).
            config: limits (max_tokens, job TTL, clock skew, frame size).
            served: the engines, by model sha256.
            store: jobs accepted and results stored here (a replayed job id is refused).
            settled: whether a chain settles the jobs (then a client address must be EIP-55).
            record_served: indexes a finished job for the oracle's report.
            activity: counts running jobs, for a draining node.
            load_changed: called when an engine's queue changes, so the advert follows.
    """

    key: Any
    config: Config
    served: dict[str, Served]
    store: AsyncStore
    settled: bool
    record_served: Callable[[str], Awaitable[None]]
    activity: Any
    load_changed: Callable[[], None]

    def __post_init__(self) -> None:
        self.peer_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))

    async def serve(self, envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
        """Answer one ``exec`` request: the job's tokens as they come, then the signed result.
        Raises JobRejected (sent as an error frame by :class:`inferad.service.Service`)."""
        request: wire.ExecRequest = envelope.message
        job_envelope = wire.decode(request.job, max_size=self.config.max_frame)
        if job_envelope.type != "job":
            raise JobRejected("unexpected", "an exec request must carry a client-signed job")
        job_id = job_envelope.digest
        check_timing_now(job_envelope.message, self.config)
        if len(request.prefix) > job_envelope.message.params.max_tokens:  # no continuation can be that long
            raise JobRejected("schema", f"exec.prefix holds {len(request.prefix)} tokens, more than the job's "
                                        f"max_tokens ({job_envelope.message.params.max_tokens})")
        if self.settled:  # it will be settled: its client must have one spelling
            check_client_eth(job_envelope.message)
        gateway, prefix = envelope.signer_peer_id, len(request.prefix)
        resume = functools.partial(_resumable, gateway=gateway, prefix=prefix)
        if not await self.store.accept_job(job_id, request.job, role="worker", gateway=gateway, prefix=prefix,
                                           resume=resume):
            raise JobRejected("replay", f"job {job_id[:16]}… was already run here")
        with self.activity.job():
            try:
                signed, _ = await self.execute(job_envelope, list(request.prefix), framed.send_tokens)
            except JobRejected as exc:
                await self.store.fail_job(job_id, exc.code)
                raise
        await self.store.finish_job(job_id, signed)
        await self.record_served(job_id)
        await framed.send(signed)

    def prompt_tokens(self, job: wire.JobRequest) -> list[int]:
        """The job's prompt as this node's engine tokenizes it. Raises JobRejected("invalid_prompt")."""
        try:
            return self.served[job.served_key].engine.prompt_tokens(job)
        except EngineError as exc:
            raise JobRejected("invalid_prompt", str(exc)) from None

    async def execute(self, envelope: wire.Envelope, prefix: list[int], send_tokens: SendTokens) \
            -> tuple[bytes, wire.Envelope]:
        """Run a job on this node's engine (continuing after ``prefix``); the signed result.
        Raises JobRejected (the job's code: unknown model, limits, busy, expired, cancelled)."""
        job: wire.JobRequest = envelope.message
        check_served(job, served=self.served, max_tokens=self.config.max_tokens)
        served = self.served[job.served_key]
        prompt = self.prompt_tokens(job)
        check_context(len(prompt), job.params.max_tokens, served.engine.n_ctx)
        if job.params.n > served.worker.slots:
            raise JobRejected("too_many_choices", f"{job.params.n} choices: this node decodes at most "
                                                  f"{served.worker.slots} side by side (its --parallel)")
        self.load_changed()
        try:
            generation, queue_ms = await served.worker.run(prompt, job.params, send_tokens, prefix,
                                                           job_id=envelope.digest)
        finally:
            self.load_changed()
        result = wire.JobResult(
            job_id=envelope.digest, model=served.engine.ref, output_tokens=tuple(generation.tokens),
            text=generation.text, finish_reason=generation.finish_reason, logprobs=generation.logprobs,
            choices=generation.choices,
            usage=wire.Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens),
            timings=wire.Timings(queue_ms=queue_ms, prompt_ms=generation.prompt_ms, decode_ms=generation.decode_ms),
            engine=served.engine.info, worker=self.peer_id, signed_at=check_signing(job, now_ms=now_ms()),
            continued_from=len(prefix),
        )
        signed = wire.sign(result, self.key)
        if job.params.n == 1:
            await served.observed(generation, generation.completion_tokens - len(prefix))
        log.info("ran job", extra={"fields": {"id": envelope.digest[:16], "model": served.engine.ref.name,
                                              "tokens": generation.completion_tokens - len(prefix),
                                              "tokens_per_s": round(generation.tokens_per_second, 1),
                                              "continued_from": len(prefix)}})
        return signed, wire.decode(signed)


def _resumable(record: dict, *, gateway: str, prefix: int) -> bool:
    """Whether a job this worker ran before may run again: its run was cut off without a result
    because its gateway's connection went away (a relay that died: the gateway continues on this
    worker over another path), and the same gateway now asks for a continuation of it."""
    return (record.get("status") == "failed" and record.get("error") == "cancelled"
            and record["meta"].get("gateway") == gateway and prefix > 0)


def check_timing_now(job: wire.JobRequest, config: Config) -> None:
    """:func:`inferad.admission.check_timing` at this moment, with this node's limits."""
    check_timing(job, now_ms=now_ms(), max_ttl_s=config.max_job_ttl, clock_skew_s=config.clock_skew)
