"""Answering one signed request per stream, and the count of jobs a draining node waits for.

Every protocol a node serves (``/inferad/submit``, ``/exec``, ``/verify``,
``/settlement`` and ``submit`` on the control socket) has one shape: the
peer sends one signed request frame, the node answers with frames of its own
and closes.  :class:`Service` reads that frame within ``request_timeout``,
checks its type, refuses it while the node drains, hands it to the role's
handler, and turns every refusal into a typed error frame
(``{t: "error", code, message}``, docs/protocol.md), so no role writes error
frames itself and none lets a peer's mistake escape as an exception.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from inferad.admission import JobRejected
from p2p import wire
from p2p.streams import FramedStream, StreamClosed

log = logging.getLogger("inferad.node")

# (the request's envelope, its bytes, the stream to answer on)
Handler = Callable[[wire.Envelope, bytes, FramedStream], Awaitable[None]]


class Activity:
    """Jobs this node is running (as gateway or worker), the requests it is answering, and
    whether it is draining.

    A node that got SIGTERM drains: it refuses new requests (``shutting_down``)
    and waits, at most a grace period, for :meth:`idle`: no job running and no
    request unanswered (a job's result is sent after its job is done).
    ``running`` is what ``inferad status`` shows as active jobs.
    """

    def __init__(self) -> None:
        self.draining = False
        self._holds = {"jobs": 0, "requests": 0}
        self._idle = trio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        """Jobs running now."""
        return self._holds["jobs"]

    def job(self) -> contextlib.AbstractContextManager[None]:
        """Count one job for as long as the block runs."""
        return self._holding("jobs")

    def request(self) -> contextlib.AbstractContextManager[None]:
        """Hold the drain for as long as the block answers one request."""
        return self._holding("requests")

    @contextlib.contextmanager
    def _holding(self, kind: str) -> Iterator[None]:
        self._holds[kind] += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            yield
        finally:
            self._holds[kind] -= 1
            if not any(self._holds.values()):
                self._idle.set()

    async def idle(self) -> None:
        """Return once no job runs and every request taken is answered."""
        await self._idle.wait()

    async def drain_on_signal(self, grace_s: float) -> None:
        """Wait for SIGINT or SIGTERM, then drain: refuse new requests and return once idle, or
        after ``grace_s`` seconds."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: refusing new jobs, finishing %d running",
                         signal.Signals(signum).name, self.running)
                self.draining = True
                with trio.move_on_after(grace_s):
                    await self.idle()
                return


@dataclass(kw_only=True, eq=False)
class Service:
    """Reads one signed request from a stream and hands it to a handler; see the module docstring.

    Args:   max_frame: the largest frame accepted (bytes).
            request_timeout: seconds a peer has to send its whole request.
            activity: whose ``draining`` makes every request a ``shutting_down`` refusal.
    """

    max_frame: int
    request_timeout: float
    activity: Activity

    def handler(self, expect: str | tuple[str, ...], handle: Handler) -> Callable[[Any], Awaitable[None]]:
        """A libp2p stream handler answering requests of type ``expect`` with ``handle``."""
        async def serve(stream: Any) -> None:
            await self.answer(FramedStream(stream, self.max_frame), expect, handle)

        return serve

    async def answer(self, framed: FramedStream, expect: str | tuple[str, ...], handle: Handler) -> None:
        """Read one signed request of type ``expect``, hand it to ``handle``; typed errors for the
        rest.  Closes ``framed`` (resets it after an oversized frame).  A draining node waits for
        the answer (:meth:`Activity.request`)."""
        with self.activity.request():
            await self._answer(framed, expect, handle)

    async def _answer(self, framed: FramedStream, expect: str | tuple[str, ...], handle: Handler) -> None:
        try:
            with trio.fail_after(self.request_timeout):
                data = await framed.receive()
            envelope = wire.decode(data, max_size=self.max_frame)
            if envelope.type not in ((expect,) if isinstance(expect, str) else expect):
                raise JobRejected("unexpected", f"expected a {expect} message, got a {envelope.type}")
            if self.activity.draining:
                raise JobRejected("shutting_down", "this node is shutting down")
            await handle(envelope, data, framed)
        except wire.FrameTooLarge as exc:
            await framed.send_error(exc.code, str(exc))
            await framed.reset()
            return
        except wire.WireError as exc:
            await framed.send_error(exc.code, str(exc))
        except JobRejected as exc:
            await framed.send_error(exc.code, exc.message)
        except trio.TooSlowError:
            await framed.send_error("timeout", f"no complete request within {self.request_timeout} s")
        except StreamClosed:
            pass
        await framed.close()
