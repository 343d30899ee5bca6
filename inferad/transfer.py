"""Model files over the mesh (docs/protocol.md, "Model transfer"): a node serves the bytes of the
models it serves, and fetches a model it lacks by sha256 from the peers that advertise it.

Protocol ``/inferad/model/1.0.0``.  On one stream the fetcher sends requests one at a time, each
answered by one frame (frames of at most ``wire.MODEL_MAX_FRAME`` bytes):

- ``model_info_request {sha256}`` -> ``model_info {sha256, name, size, root}``, signed by the
  provider: the file's size and the root of its chunk tree (:mod:`proofs.chunks`);
- ``chunk_request {sha256, index}`` -> ``chunk {sha256, index, data, proof}``;
- either -> ``error {code, message}``: ``unknown_model`` (not served here), ``bad_request``.

Fetching (:class:`Fetch`): every provider is asked for its ``model_info``; the (size, root) that
most providers sign is fetched first, ``STREAMS_PER_PROVIDER`` streams per provider pulling the
missing chunks in parallel.  Each chunk is checked against the root as it arrives: a provider
that sends a bad one is dropped for the rest of the fetch and the chunk is asked of another;
one that fails (timeout, reset) is retried with backoff and dropped after ``MAX_FAILURES`` in a
row.  Chunks land in ``<sha256>.partial``, and the ones checked are listed in
``<sha256>.partial.json`` every few chunks, so an interrupted fetch resumes where it stopped.
The whole file's sha256 is checked before the file enters the cache
(:class:`inferad.model_cache.ModelCache`); a root whose bytes do not hash to the sha256 was a
lie of every provider that signed it, its partial file is deleted, and the next root is tried.
No job is ever served from a partial file: the engine opens only ``<sha256>.gguf``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from inferad.files import write_json
from inferad.model_cache import CachedModel, ModelCache
from inferad.models import ModelError, file_label
from p2p import wire
from p2p.streams import FramedStream, StreamClosed
from proofs.chunks import ChunkTree, chunk_count, chunk_span, leaf, verify_chunk

log = logging.getLogger("inferad.transfer")

PROTOCOL_MODEL = "/inferad/model/1.0.0"
STREAMS_PER_PROVIDER = 2  # requests in flight per provider: one chunk crosses while the next is read
MAX_FAILURES = 3  # failures in a row before a provider is dropped from a fetch
RETRY_S = 0.5  # first backoff after a failure, doubled each time
SAVE_EVERY = 16  # chunks between two saves of a partial fetch's state
DISK_READS = trio.CapacityLimiter(4)  # chunk reads and writes in flight, all models together

Stream = Any  # a libp2p stream
OpenStream = Callable[[str], Awaitable[Stream]]  # peer id -> a new /inferad/model stream to it
OnProgress = Callable[["Progress"], None]


class FetchError(ModelError):
    """A model could not be fetched; the message says why and what to do."""


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class _Shared:
    label: str
    path: Path
    size: int
    tree: ChunkTree
    info: bytes  # the signed model_info frame


@dataclass(kw_only=True, eq=False)
class ModelShare:
    """Serves the chunks of this node's models on ``/inferad/model/1.0.0``.

    Args:   key: this node's signing key (``model_info`` is signed with it).
            files: the models served now, ``{sha256: (label, path)}`` (called per request).
            request_timeout: seconds a stream may sit idle between two requests.
    """

    key: Any
    files: Callable[[], dict[str, tuple[str, Path]]]
    request_timeout: float
    _shared: dict[str, _Shared] = field(default_factory=dict)
    _hashing: dict[str, trio.Lock] = field(default_factory=dict)

    async def serve(self, stream: Stream) -> None:
        framed = FramedStream(stream, wire.MODEL_MAX_FRAME)
        try:
            while True:
                with trio.move_on_after(self.request_timeout) as idle:
                    frame = await framed.receive()
                if idle.cancelled_caught:
                    return
                answer, more = await self._answer(frame)
                await framed.send(answer)
                if not more:  # a peer that sends what this protocol does not take gets one answer
                    return
        except StreamClosed:  # the fetcher is done, or gone
            return
        finally:
            await framed.close()

    async def _answer(self, frame: bytes) -> tuple[bytes, bool]:
        """The frame answering ``frame``, and whether the stream takes more requests."""
        try:
            request = wire.decode(frame, max_size=wire.MODEL_MAX_FRAME)
        except wire.WireError as exc:
            return wire.error_frame(exc.code, str(exc)), False
        if request.type not in ("model_info_request", "chunk_request"):
            return wire.error_frame("unexpected", f"this protocol takes model_info_request and chunk_request, "
                                                  f"not {request.type}"), False
        shared = await self._shared_model(request.message.sha256)
        if shared is None:
            return wire.error_frame("unknown_model", f"this node does not serve {request.message.sha256}"), True
        if request.type == "model_info_request":
            return shared.info, True
        index = request.message.index
        if index >= chunk_count(shared.size):
            return wire.error_frame("bad_request", f"chunk {index} is past the end: the file has "
                                                   f"{chunk_count(shared.size)} chunks"), True
        offset, length = chunk_span(shared.size, index)
        data = await trio.to_thread.run_sync(_read, shared.path, offset, length, limiter=DISK_READS)
        return wire.encode_unsigned(wire.Chunk(sha256=request.message.sha256, index=index, data=data,
                                               proof=tuple(shared.tree.proof(index)))), True

    async def _shared_model(self, sha256: str) -> _Shared | None:
        served = self.files().get(sha256)
        if served is None:
            return None
        lock = self._hashing.setdefault(sha256, trio.Lock())
        async with lock:  # the first request hashes the file's chunks (a second per 250 MB), once
            if sha256 not in self._shared:
                label, path = served
                size, tree = await trio.to_thread.run_sync(_chunk_tree, path, limiter=DISK_READS)
                info = wire.sign(wire.ModelInfo(sha256=sha256, name=label, size=size, root=tree.root), self.key)
                self._shared[sha256] = _Shared(label, path, size, tree, info)
        return self._shared[sha256]


def _read(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        return os.pread(f.fileno(), length, offset)


def _chunk_tree(path: Path) -> tuple[int, ChunkTree]:
    size = path.stat().st_size
    with path.open("rb") as f:
        return size, ChunkTree(leaf(os.pread(f.fileno(), length, offset))
                               for offset, length in (chunk_span(size, i) for i in range(chunk_count(size))))


# --------------------------------------------------------------------------- fetching


@dataclass
class Progress:
    """Where a fetch stands: bytes checked and in place, of ``total``; providers still used."""

    done: int
    total: int
    providers: int
    started: float  # time.monotonic()
    resumed: int = 0  # bytes found in place from an earlier, interrupted fetch

    def rate(self) -> float:
        """Bytes per second fetched in this run."""
        return (self.done - self.resumed) / max(time.monotonic() - self.started, 1e-6)


@dataclass(frozen=True)
class _Root:
    size: int
    root: bytes
    label: str
    providers: tuple[str, ...]


class _RootLied(Exception):
    pass


@dataclass(kw_only=True, eq=False)
class Fetch:
    """One model fetched by sha256 into ``cache`` from ``providers``.

    Args:   sha256: the model's identity (64 hex digits).
            providers: peer ids that advertise it.
            open_stream: a new ``/inferad/model`` stream to a peer.
            cache: where the file goes (its limit is made room for first).
            on_progress: called after every chunk.
            timeout: seconds for one answer.
    Raises (:meth:`run`): FetchError, with the reason and what to do.
    """

    sha256: str
    providers: list[str]
    open_stream: OpenStream
    cache: ModelCache
    on_progress: OnProgress | None = None
    timeout: float = 30.0
    max_size: int | None = None  # bytes: a larger file is refused before any chunk moves
    reasons: dict[str, str] = field(default_factory=dict)  # why each dropped provider was dropped

    async def run(self) -> CachedModel:
        if not self.providers:
            raise FetchError(f"no peer serves model {self.sha256}: check the sha256, or wait for its providers' "
                             f"adverts (`inferad models` lists what the network serves)")
        roots = await self._roots()
        if not roots:
            raise FetchError(f"none of the {len(self.providers)} provider(s) of {self.sha256[:12]}… described it: "
                             + self._why())
        for candidate in roots:
            if self.max_size is not None and candidate.size > self.max_size:
                raise FetchError(f"model {self.sha256[:12]}… is {candidate.size / 1e6:.0f} MB, over the "
                                 f"{self.max_size / 1e6:.0f} MB this node fetches for it")
            try:
                return await self._fetch(candidate)
            except _RootLied as exc:
                log.warning("%s", exc)
                self.cache.discard_partial(self.sha256)
                for peer in candidate.providers:
                    self.reasons[peer] = "signed a chunk root whose bytes are not the model"
        raise FetchError(f"every provider of {self.sha256[:12]}… served bytes that are not the model: {self._why()}")

    def _why(self) -> str:
        return "; ".join(f"{peer[:16]}…: {why}" for peer, why in self.reasons.items()) or "no answer"

    async def _roots(self) -> list[_Root]:
        """The (size, root) pairs the providers sign, the one most sign first."""
        infos: dict[str, wire.ModelInfo] = {}

        async def ask(peer: str) -> None:
            try:
                with trio.fail_after(self.timeout):
                    stream = await self.open_stream(peer)
                    framed = FramedStream(stream, wire.MODEL_MAX_FRAME)
                    try:
                        await framed.send(wire.encode_unsigned(wire.ModelInfoRequest(sha256=self.sha256)))
                        answer = wire.decode(await framed.receive(), max_size=wire.MODEL_MAX_FRAME)
                    finally:
                        await framed.close()
            except Exception as exc:  # unreachable, timed out, reset, undecodable: this provider only
                self.reasons[peer] = f"no model_info ({type(exc).__name__}: {exc})"
                return
            if answer.type == "error":
                self.reasons[peer] = f"{answer.message.code}: {answer.message.message}"
            elif answer.type != "model_info" or answer.message.sha256 != self.sha256:
                self.reasons[peer] = f"answered {answer.type} for another model"
            elif answer.signer_peer_id != peer:
                self.reasons[peer] = "its model_info is signed by another peer"
            else:
                infos[peer] = answer.message

        async with trio.open_nursery() as nursery:
            for peer in self.providers:
                nursery.start_soon(ask, peer)
        votes = Counter((info.size, info.root) for info in infos.values())
        return [_Root(size, root, next(i.name for i in infos.values() if (i.size, i.root) == (size, root)),
                      tuple(p for p, i in infos.items() if (i.size, i.root) == (size, root)))
                for (size, root), _ in votes.most_common()]

    async def _fetch(self, target: _Root) -> CachedModel:
        count = chunk_count(target.size)
        try:  # before a partial file exists: a refusal leaves nothing behind
            await trio.to_thread.run_sync(self.cache.room_for, target.size, self.sha256)
        except ModelError as exc:
            raise FetchError(str(exc)) from None
        done = await trio.to_thread.run_sync(self._resume, target)
        free = shutil.disk_usage(self.cache.root).free
        needed = target.size - sum(chunk_span(target.size, i)[1] for i in done)
        if free < needed:
            self.cache.discard_partial(self.sha256)
            raise FetchError(f"not enough disk for {self.sha256[:12]}…: {needed / 1e6:.0f} MB needed, "
                             f"{free / 1e6:.0f} MB free in {self.cache.root}")
        missing = [i for i in range(count) if i not in done]
        resumed = sum(chunk_span(target.size, i)[1] for i in done)
        progress = Progress(done=resumed, total=target.size, providers=len(target.providers),
                            started=time.monotonic(), resumed=resumed)
        if resumed:
            log.info("resuming %s: %d of %d chunks already in place", self.sha256[:12], len(done), count)
        pull = _Pull(fetch=self, target=target, missing=missing, done=done, progress=progress)
        fd = os.open(self.cache.partial(self.sha256), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await pull.run(fd)
        finally:
            os.close(fd)
            await trio.to_thread.run_sync(self._save, target, done)
        if pull.missing:
            raise FetchError(f"{len(pull.missing)} of {count} chunks of {self.sha256[:12]}… could not be fetched "
                             f"({self._why()}); run the same command again to resume")
        digest = await trio.to_thread.run_sync(_sha256, self.cache.partial(self.sha256), limiter=DISK_READS)
        if digest != self.sha256:
            raise _RootLied(f"the chunks of root {target.root.hex()[:16]}… hash to {digest[:16]}…, not "
                            f"{self.sha256[:16]}…: provider(s) {', '.join(p[:16] for p in target.providers)} lied")
        sources = ",".join(p for p in target.providers if p not in pull.dropped)
        return await trio.to_thread.run_sync(self.cache.add, self.sha256, file_label(target.label, self.sha256),
                                             sources)

    def _resume(self, target: _Root) -> set[int]:
        """Chunks of an interrupted fetch of the same file that are already in place."""
        state_path, partial = self.cache.partial_state(self.sha256), self.cache.partial(self.sha256)
        try:
            state = json.loads(state_path.read_text())
            if (state["size"], bytes.fromhex(state["root"])) == (target.size, target.root) and partial.is_file():
                return {int(i) for i in state["done"] if 0 <= int(i) < chunk_count(target.size)}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self.cache.discard_partial(self.sha256)
        self.cache.root.mkdir(parents=True, exist_ok=True)
        with partial.open("wb") as f:
            f.truncate(target.size)  # sparse: chunks land at their offsets
        self._save(target, set())
        return set()

    def _save(self, target: _Root, done: set[int]) -> None:
        if not self.cache.partial(self.sha256).is_file():
            return
        write_json(self.cache.partial_state(self.sha256), {"sha256": self.sha256, "size": target.size,
                                                           "root": target.root.hex(), "done": sorted(done)})


@dataclass(kw_only=True, eq=False)
class _Pull:
    """The chunk transfers of one fetch: ``STREAMS_PER_PROVIDER`` workers per provider."""

    fetch: Fetch
    target: _Root
    missing: list[int]
    done: set[int]
    progress: Progress
    in_flight: int = 0
    dropped: set[str] = field(default_factory=set)
    failed: FetchError | None = None  # a failure that ends the whole fetch (a full disk)

    async def run(self, fd: int) -> None:
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            for peer in self.target.providers:
                for _ in range(STREAMS_PER_PROVIDER):
                    nursery.start_soon(self._worker, peer, fd)
        if self.failed is not None:
            raise self.failed

    def _drop(self, peer: str, why: str) -> None:
        if peer not in self.dropped:
            log.warning("model %s: dropping provider %s: %s", self.fetch.sha256[:12], peer, why)
            self.dropped.add(peer)
            self.fetch.reasons[peer] = why
            self.progress.providers -= 1

    async def _worker(self, peer: str, fd: int) -> None:
        framed: FramedStream | None = None
        failures = 0
        try:
            while peer not in self.dropped:
                if not self.missing:
                    if not self.in_flight:
                        return
                    await trio.sleep(0.05)  # another worker may give its chunk back
                    continue
                index = self.missing.pop(0)
                self.in_flight += 1
                try:
                    if framed is None:
                        with trio.fail_after(self.fetch.timeout):
                            framed = FramedStream(await self.fetch.open_stream(peer), wire.MODEL_MAX_FRAME)
                    chunk = await self._ask(framed, index)
                except Exception as exc:  # timed out, reset, undecodable, a bad chunk
                    self.missing.insert(0, index)
                    if isinstance(exc, _BadChunk):
                        self._drop(peer, str(exc))
                        return
                    failures += 1
                    if framed is not None:
                        await framed.reset()
                        framed = None
                    if failures >= MAX_FAILURES:
                        self._drop(peer, f"failed {failures} times in a row ({type(exc).__name__}: {exc})")
                        return
                    await trio.sleep(RETRY_S * 2 ** (failures - 1))
                    continue
                finally:
                    self.in_flight -= 1
                failures = 0
                await self._write(fd, index, chunk)
        finally:
            if framed is not None:
                await framed.close()

    async def _ask(self, framed: FramedStream, index: int) -> bytes:
        with trio.fail_after(self.fetch.timeout):
            await framed.send(wire.encode_unsigned(wire.ChunkRequest(sha256=self.fetch.sha256, index=index)))
            answer = wire.decode(await framed.receive(), max_size=wire.MODEL_MAX_FRAME)
        if answer.type == "error":
            raise _BadChunk(f"answered {answer.message.code}: {answer.message.message}")
        if answer.type != "chunk" or answer.message.index != index or answer.message.sha256 != self.fetch.sha256:
            raise _BadChunk(f"answered chunk {index} with something else ({answer.type})")
        chunk = answer.message
        if not verify_chunk(self.target.root, self.target.size, index, chunk.data, chunk.proof):
            raise _BadChunk(f"sent chunk {index} that does not match the root it signed")
        return chunk.data

    async def _write(self, fd: int, index: int, data: bytes) -> None:
        offset, _ = chunk_span(self.target.size, index)
        try:
            await trio.to_thread.run_sync(os.pwrite, fd, data, offset, limiter=DISK_READS)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self.fetch.cache.discard_partial(self.fetch.sha256)
            self.failed = FetchError(f"the disk under {self.fetch.cache.root} is full: the partial "
                                     f"{self.fetch.sha256[:12]}… was removed")
            self._cancel.cancel()
            return
        self.done.add(index)
        self.progress.done += len(data)
        if len(self.done) % SAVE_EVERY == 0:
            await trio.to_thread.run_sync(self.fetch._save, self.target, set(self.done))
        if self.fetch.on_progress is not None:
            self.fetch.on_progress(self.progress)


class _BadChunk(Exception):
    """A provider answered a chunk request with something that is not that chunk."""


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --------------------------------------------------------------------------- the node's role


@dataclass(kw_only=True, eq=False)
class Fetcher:
    """Fetches models for this node, from the peers whose adverts offer them: at start
    (``inferad start --model sha256:…``) and for ``inferad models pull`` (:meth:`pull`).

    Args:   providers: the peer ids (other than this node) whose fresh adverts offer a sha256.
            open_stream: a new ``/inferad/model`` stream to a peer (dialed by its advert).
            cache: the model cache.
            wait_s: how long to wait for a first provider's advert.
    """

    providers: Callable[[str], list[str]]
    open_stream: OpenStream
    cache: ModelCache
    wait_s: float = 30.0
    _fetching: dict[str, trio.Lock] = field(default_factory=dict)

    async def fetch(self, sha256: str, on_progress: OnProgress | None = None,
                    max_size: int | None = None) -> CachedModel:
        """The cached model ``sha256``, fetched first if the cache lacks it (refused when larger than
        ``max_size`` bytes).  Raises FetchError."""
        async with self._fetching.setdefault(sha256, trio.Lock()):  # one fetch per file at a time
            if (cached := self.cache.find(sha256)) is not None:
                return cached
            with trio.move_on_after(self.wait_s):
                while not self.providers(sha256):
                    await trio.sleep(0.5)
            return await Fetch(sha256=sha256, providers=self.providers(sha256), open_stream=self.open_stream,
                               cache=self.cache, on_progress=on_progress, max_size=max_size).run()

    async def pull(self, framed: Any, ref: str = "") -> None:
        """The control socket's ``pull`` command: ``{"progress": {done, total, providers, rate}}``
        frames, then ``{"ok": cached model}`` or ``{"error": message}``."""
        import msgpack

        from inferad.model_cache import model_ref

        sha = model_ref(ref)
        if sha is None:
            await framed.send(msgpack.packb({"error": f"{ref!r} names no model by sha256: pass sha256:<64 hex> "
                                                      f"or label@sha256:<64 hex> (`inferad models` lists them)"}))
            return
        last = 0.0

        def report(progress: Progress) -> None:
            nonlocal last
            if time.monotonic() - last >= 0.2 or progress.done == progress.total:
                last = time.monotonic()
                with contextlib.suppress(trio.WouldBlock):  # a slow reader misses progress, never the answer
                    sending.send_nowait({"progress": {"done": progress.done, "total": progress.total,
                                                      "providers": progress.providers, "rate": progress.rate()}})

        sending, receiving = trio.open_memory_channel[dict](64)

        async def forward() -> None:
            async for frame in receiving:
                await framed.send(msgpack.packb(frame))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            try:
                cached = await self.fetch(sha, report)
                reply = {"ok": cached.to_json()}
            except ModelError as exc:
                reply = {"error": str(exc)}
            await sending.send(reply)
            await sending.aclose()

