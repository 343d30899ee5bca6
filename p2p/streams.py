"""Length-prefixed msgpack frames over a libp2p stream, or a trio stream.

The sans-I/O :class:`~p2p.wire.FrameDecoder` does the parsing; this module
only moves bytes, so all the rules about sizes live in one tested place.
:class:`FramedStream` carries frames over a libp2p stream;
:class:`SocketFramedStream` carries the same frames over a trio stream (the
node's local control socket) and never imports libp2p, so a CLI that talks
to a node on its own machine does not pay a second of imports for it.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from p2p import wire

log = logging.getLogger("inferad.p2p")
READ_CHUNK = 64 * 1024


class StreamClosed(Exception):
    """The peer closed or reset the stream before a whole frame arrived."""


class FramedStream:
    """Frames over a libp2p stream; every transport failure surfaces as :class:`StreamClosed`."""

    def __init__(self, stream: Any, max_frame: int = wire.DEFAULT_MAX_FRAME) -> None:
        self.stream = stream
        self._decoder = wire.FrameDecoder(max_frame)

    @property
    def remote_peer_id(self) -> str:
        return self.stream.muxed_conn.peer_id.to_base58()

    async def receive(self) -> bytes:
        """The next frame; FrameTooLarge as soon as a length prefix is too big."""
        while (frame := self._decoder.next_frame()) is None:
            chunk = await self._read(READ_CHUNK)
            if not chunk:
                raise StreamClosed("end of stream")
            self._decoder.feed(chunk)
        return frame

    async def _read(self, max_bytes: int) -> bytes:
        from libp2p.network.stream.exceptions import StreamError

        try:
            return await self.stream.read(max_bytes)
        except StreamError as exc:
            raise StreamClosed(str(exc) or type(exc).__name__) from None

    def buffered_frames(self) -> list[bytes]:
        """Complete frames that already arrived with the last read (no I/O)."""
        frames = []
        while (frame := self._decoder.next_frame()) is not None:
            frames.append(frame)
        return frames

    async def send(self, payload: bytes) -> None:
        await self._write(wire.encode_frame(payload))

    async def _write(self, data: bytes) -> None:
        from libp2p.network.stream.exceptions import StreamError

        try:
            await self.stream.write(data)
        except StreamError as exc:
            raise StreamClosed(str(exc) or type(exc).__name__) from None

    async def send_tokens(self, tokens: list[wire.Token]) -> None:
        """Several token frames in one write."""
        await self._write(b"".join(wire.encode_frame(wire.encode_unsigned(t)) for t in tokens))

    async def send_error(self, code: str, message: str) -> None:
        """Tell the peer why, if it is still listening."""
        try:
            await self.send(wire.error_frame(code, message))
        except StreamClosed:
            pass

    async def close(self) -> None:
        with trio.move_on_after(2):
            try:
                await self.stream.close()
            except Exception:  # already reset by the peer: nothing left to close
                pass

    async def reset(self) -> None:
        try:
            await self.stream.reset()
        except Exception:
            pass


class SocketFramedStream(FramedStream):
    """The same frames over a trio stream (a Unix socket): no libp2p involved."""

    async def _read(self, max_bytes: int) -> bytes:
        try:
            return await self.stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(str(exc) or type(exc).__name__) from None

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosed(str(exc) or type(exc).__name__) from None

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)  # nothing to flush: every write was awaited whole

    async def reset(self) -> None:
        await trio.aclose_forcefully(self.stream)
