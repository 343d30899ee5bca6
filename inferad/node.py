"""The daemon: the one place where store, engines, host and protocols meet.

A :class:`Node` owns one trio nursery for its own tasks (signals, control
socket); py-libp2p runs stream handlers in the host's nursery, each wrapped
by :func:`guarded` so that no exception escapes into the host.  Blocking work
goes through ``trio.to_thread`` with limiters sized on purpose: one per
engine (llama.cpp is single-threaded per context), a few for LevelDB.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from inferad import __version__, control
from inferad.admission import JobRejected, check_context, check_job
from inferad.config import Config
from inferad.engine import Engine, EngineError
from inferad.home import Home
from inferad.models import ModelError, resolve
from inferad.store import Store
from inferad.worker import Worker
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT, make_host, running
from p2p.streams import FramedStream, StreamClosed

log = logging.getLogger("inferad.node")
SHUTDOWN_GRACE_S = 10


class NodeError(Exception):
    """The node cannot start; the message says what to change."""


@dataclass
class Served:
    engine: Engine
    worker: Worker


def guarded(name: str, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """Wrap a stream handler so no exception reaches py-libp2p (it would kill the host)."""

    async def run(stream: Any) -> None:
        try:
            await handler(stream)
        except Exception:
            log.exception("%s handler failed; resetting the stream", name)
            try:
                await stream.reset()
            except Exception:
                pass

    return run


class Node:
    def __init__(self, home: Home, config: Config) -> None:
        self.home = home
        self.config = config
        self.key = home.node_key
        self.peer_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))
        self.served: dict[str, Served] = {}
        self.store: Store | None = None
        self._db_limiter = trio.CapacityLimiter(4)
        self._draining = False
        self._active_jobs = 0
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGINT/SIGTERM (or cancellation); always cleans up."""
        from libp2p.custom_types import TProtocol

        self.store = await trio.to_thread.run_sync(Store, self.home.db_path)
        try:
            interrupted = await trio.to_thread.run_sync(self.store.mark_interrupted)
            if interrupted:
                log.warning("%d job(s) were interrupted by the previous shutdown", interrupted)
            await self._load_models()
            host = make_host(self.key)
            host.set_stream_handler(TProtocol(PROTOCOL_SUBMIT), guarded("submit", self._serve_submit))
            listen = [_multiaddr(a) for a in self.config.listen]
            try:
                async with running(host, listen):
                    self.addrs = [str(a) for a in host.get_addrs()]
                    async with trio.open_nursery() as nursery:
                        await nursery.start(control.serve, self.home.path / "control.sock",
                                            self._control_commands())
                        self._write_node_info()
                        log.info("node %s listening on %s", self.peer_id, " ".join(self.addrs))
                        task_status.started(self)
                        await self._until_signalled()
                        nursery.cancel_scope.cancel()
            except OSError as exc:
                raise NodeError(f"cannot listen on {' '.join(self.config.listen)}: {exc.strerror or exc}") \
                    from None
        finally:
            self.home.node_info_path.unlink(missing_ok=True)
            for served in self.served.values():
                served.engine.close()
            self.store.close()
            log.info("node stopped")

    async def _load_models(self) -> None:
        for spec in self.config.models:
            try:
                model = await trio.to_thread.run_sync(resolve, spec)
                engine = await trio.to_thread.run_sync(
                    lambda m=model: Engine(m, n_ctx=self.config.n_ctx, n_threads=self.config.n_threads,
                                           n_gpu_layers=self.config.n_gpu_layers))
            except (ModelError, EngineError) as exc:
                raise NodeError(f"cannot serve model {spec}: {exc}") from None
            self.served[model.sha256] = Served(engine, Worker(engine, queue_size=self.config.queue_size,
                                                              batch_ms=self.config.stream_batch_ms))

    async def _until_signalled(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: refusing new jobs, finishing %d running",
                         signal.Signals(signum).name, self._active_jobs)
                self._draining = True
                with trio.move_on_after(SHUTDOWN_GRACE_S):
                    while self._active_jobs:
                        await trio.sleep(0.05)
                return

    def _write_node_info(self) -> None:
        info = {
            "peer_id": self.peer_id,
            "addrs": _dialable(self.addrs),
            "pid": os.getpid(),
            "control": str(self.home.path / "control.sock"),
            "models": [{"name": s.engine.ref.name, "sha256": sha} for sha, s in self.served.items()],
            "version": __version__,
            "started_at": int(self.started_at),
        }
        tmp = self.home.node_info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.home.node_info_path)

    # ------------------------------------------------------------------ submit protocol

    async def _serve_submit(self, stream: Any) -> None:
        framed = FramedStream(stream, self.config.max_frame)
        try:
            with trio.fail_after(self.config.request_timeout):
                data = await framed.receive()
            envelope = wire.decode(data, max_size=self.config.max_frame)
            if envelope.type != "job":
                raise JobRejected("unexpected", f"expected a job, got a {envelope.type}")
            await self._run_job(envelope, data, framed)
        except wire.FrameTooLarge as exc:
            await framed.send_error(exc.code, str(exc))
            await framed.reset()
            return
        except wire.WireError as exc:
            await framed.send_error(exc.code, str(exc))
        except JobRejected as exc:
            await framed.send_error(exc.code, exc.message)
        except trio.TooSlowError:
            await framed.send_error("timeout", f"no complete request within {self.config.request_timeout} s")
        except StreamClosed:
            pass
        await framed.close()

    async def _run_job(self, envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
        job: wire.JobRequest = envelope.message
        job_id = envelope.digest
        check_job(job, now_ms=_now_ms(), served=self.served, max_tokens=self.config.max_tokens,
                  max_ttl_s=self.config.max_job_ttl, clock_skew_s=self.config.clock_skew)
        served = self.served[job.model.sha256]
        try:
            prompt = served.engine.prompt_tokens(job)
        except EngineError as exc:
            raise JobRejected("unsupported", str(exc)) from None
        check_context(len(prompt), job.params.max_tokens, served.engine.n_ctx)
        if self._draining:
            raise JobRejected("shutting_down", "this node is shutting down")
        if not await self._db(self.store.accept_job, job_id, data):
            raise JobRejected("replay", f"job {job_id[:16]}… was already submitted")
        self._active_jobs += 1
        try:
            generation, queue_ms = await served.worker.run(
                prompt, job.params, framed.send_tokens)
        except JobRejected as exc:
            await self._db(self.store.fail_job, job_id, exc.code)
            self._log_job(job_id, job, outcome=exc.code)
            raise
        finally:
            self._active_jobs -= 1
        result = wire.JobResult(
            job_id=job_id, model=served.engine.ref, output_tokens=tuple(generation.tokens),
            text=generation.text, finish_reason=generation.finish_reason,
            usage=wire.Usage(prompt_tokens=generation.prompt_tokens,
                             completion_tokens=len(generation.tokens)),
            timings=wire.Timings(queue_ms=queue_ms, prompt_ms=generation.prompt_ms,
                                 decode_ms=generation.decode_ms),
            engine=served.engine.info, worker=self.peer_id,
        )
        signed = wire.sign(result, self.key)
        await self._db(self.store.finish_job, job_id, signed)  # synced before the client hears of it
        await framed.send(signed)
        self._log_job(job_id, job, outcome="ok", tokens=len(generation.tokens),
                      tokens_per_s=round(generation.tokens_per_second, 1))

    def _log_job(self, job_id: str, job: wire.JobRequest, **fields: Any) -> None:
        log.info("job", extra={"fields": {"id": job_id[:16], "model": job.model.name, **fields}})

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._db_limiter)

    # ------------------------------------------------------------------ control socket

    def _control_commands(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        async def jobs(job_id: str | None = None) -> list[dict]:
            if job_id:
                record = await self._db(self.store.job, job_id)
                return [record.to_json()] if record else []
            return await self._db(lambda: [r.to_json() for r in self.store.jobs()])

        async def status() -> dict:
            return {
                "peer_id": self.peer_id, "addrs": self.addrs, "version": __version__,
                "uptime_s": int(time.time() - self.started_at), "active_jobs": self._active_jobs,
                "models": [{"name": s.engine.ref.name, "sha256": sha, "queued": s.worker.load.queued,
                            "running": s.worker.load.running} for sha, s in self.served.items()],
            }

        return {"jobs": jobs, "status": status}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _multiaddr(text: str):
    import multiaddr

    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise NodeError(f"bad listen address {text!r}: {exc}") from None


def _dialable(addrs: list[str]) -> list[str]:
    """Wildcard listen addresses are not dialable; offer loopback for local clients first."""
    local = [a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/", 1) for a in addrs if "/ip4/0.0.0.0/" in a]
    return local + [a for a in addrs if "/ip4/0.0.0.0/" not in a]
