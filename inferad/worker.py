"""Running admitted jobs on an engine from trio, one at a time, with a bounded queue.

llama.cpp generates in a worker thread; tokens come back to trio through an
unbounded channel (bounded in practice by ``max_tokens``), so the thread never
blocks on a slow client, and a client that goes away stops the generation at
the next token.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from inferad.admission import JobRejected
from inferad.engine import Engine, Generation, GenerationCancelled
from p2p import wire

log = logging.getLogger("inferad.worker")

SendTokens = Callable[[list[wire.Token]], Awaitable[None]]
T = TypeVar("T")


class Worker:
    def __init__(self, engine: Engine, *, queue_size: int, batch_ms: int = 0) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.batch_s = batch_ms / 1000
        self._limiter = trio.CapacityLimiter(1)  # a llama.cpp context is single-threaded
        self._waiting = 0

    @property
    def load(self) -> wire.Load:
        return wire.Load(queued=self._waiting, running=self._limiter.borrowed_tokens,
                         capacity=1 + self.queue_size)

    async def run(self, prompt: list[int], params: wire.SamplingParams, send_tokens: SendTokens,
                  prefix: list[int] | None = None) -> tuple[Generation, int]:
        """Generate, streaming tokens through ``send_tokens``; returns (generation, queue ms).

        The first token goes out at once; later ones are sent in batches
        gathered over ``batch_ms``, which saves the network stack (and the
        CPU cores llama.cpp shares with it) one write per token.

        Raises JobRejected("busy") when ``queue_size`` jobs already wait.
        """
        if self._limiter.borrowed_tokens and self._waiting >= self.queue_size:
            raise JobRejected("busy", f"{self._waiting} jobs are already waiting; retry later")
        queued_at = time.perf_counter()
        async with self._turn():
            queue_ms = int((time.perf_counter() - queued_at) * 1000)
            return await self._generate(prompt, params, send_tokens, prefix or []), queue_ms

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run blocking ``fn`` in a thread while it owns the engine (verifications
        queue with jobs, so they never run on a context that is generating)."""
        async with self._turn():
            return await trio.to_thread.run_sync(fn)

    @contextlib.asynccontextmanager
    async def _turn(self):
        """Wait in the queue (counted in the advertised load), then own the engine."""
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
                        prefix: list[int]) -> Generation:
        send, receive = trio.open_memory_channel(math.inf)
        stop = threading.Event()
        trio_token = trio.lowlevel.current_trio_token()

        def deliver(item: tuple[int, str]) -> None:  # runs in trio; must not raise
            try:
                send.send_nowait(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                stop.set()

        def on_token(token_id: int, delta: str) -> bool:
            # Fire and forget: the llama.cpp thread never waits for the event loop.
            try:
                trio_token.run_sync_soon(deliver, (token_id, delta))
            except trio.RunFinishedError:
                return False
            return not stop.is_set()

        async def forward() -> None:
            try:
                index = len(prefix)  # a continuation numbers tokens after the delivered ones
                async for first in receive:
                    if index > len(prefix) and self.batch_s:
                        await trio.sleep(self.batch_s)
                    batch = [first]
                    with contextlib.suppress(trio.WouldBlock, trio.EndOfChannel):
                        while True:
                            batch.append(receive.receive_nowait())
                    await send_tokens([wire.Token(index=index + i, id=token_id, text=delta)
                                       for i, (token_id, delta) in enumerate(batch)])
                    index += len(batch)
            except Exception as exc:  # the consumer failed (client gone): stop, report below
                log.debug("token consumer failed: %r", exc)
            finally:
                stop.set()
                receive.close()

        generation = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                generation = await trio.to_thread.run_sync(self.engine.generate, prompt, params, on_token, prefix)
            except GenerationCancelled:
                pass
            finally:
                send.close()
        if generation is None:
            raise JobRejected("cancelled", "generation stopped: the client went away")
        return generation
