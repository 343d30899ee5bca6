"""Running admitted jobs on an engine from trio, one at a time, with a bounded queue.

llama.cpp generates in a worker thread; tokens come back to trio through an
unbounded channel (bounded in practice by ``max_tokens``), so the thread never
blocks on a slow client, and a client that goes away stops the generation at
the next token.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from inferad.admission import JobRejected
from inferad.engine import Engine, Generation, GenerationCancelled
from p2p import wire

log = logging.getLogger("inferad.worker")

SendToken = Callable[[wire.Token], Awaitable[None]]


@dataclass
class Load:
    queued: int
    running: int
    capacity: int


class Worker:
    def __init__(self, engine: Engine, *, queue_size: int) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self._limiter = trio.CapacityLimiter(1)  # a llama.cpp context is single-threaded
        self._waiting = 0

    @property
    def load(self) -> Load:
        return Load(queued=self._waiting, running=self._limiter.borrowed_tokens, capacity=1)

    async def run(self, prompt: list[int], params: wire.SamplingParams,
                  send_token: SendToken) -> tuple[Generation, int]:
        """Generate, streaming each token through ``send_token``; returns (generation, queue ms).

        Raises JobRejected("busy") when ``queue_size`` jobs already wait.
        """
        if self._limiter.borrowed_tokens and self._waiting >= self.queue_size:
            raise JobRejected("busy", f"{self._waiting} jobs are already waiting; retry later")
        queued_at = time.perf_counter()
        self._waiting += 1
        try:
            await self._limiter.acquire()
        finally:
            self._waiting -= 1
        try:
            queue_ms = int((time.perf_counter() - queued_at) * 1000)
            return await self._generate(prompt, params, send_token), queue_ms
        finally:
            self._limiter.release()

    async def _generate(self, prompt: list[int], params: wire.SamplingParams,
                        send_token: SendToken) -> Generation:
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
                index = 0
                async for token_id, delta in receive:
                    await send_token(wire.Token(index=index, id=token_id, text=delta))
                    index += 1
            except Exception as exc:  # the consumer failed (client gone): stop, report below
                log.debug("token consumer failed: %r", exc)
            finally:
                stop.set()
                receive.close()

        generation = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                generation = await trio.to_thread.run_sync(self.engine.generate, prompt, params, on_token)
            except GenerationCancelled:
                pass
            finally:
                send.close()
        if generation is None:
            raise JobRejected("cancelled", "generation stopped: the client went away")
        return generation
