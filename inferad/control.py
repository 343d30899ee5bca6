"""The local control socket: how CLI commands ask a running node.

LevelDB admits one process at a time, so while a node runs, ``inferad jobs``
and friends ask it over ``<home>/control.sock``, a Unix socket (mode 0600:
only the home's owner may ask).  Requests and replies are single frames of
msgpack in the wire framing: ``{"cmd": NAME, "args": {...}}`` ->
``{"ok": VALUE}`` or ``{"error": MESSAGE}``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from p2p import wire

log = logging.getLogger("inferad.control")
MAX_REPLY = 64 << 20
Command = Callable[..., Awaitable[Any]]


class ControlError(Exception):
    """The node could not be asked, or answered with an error."""


async def _read_frame(stream: trio.abc.Stream, max_frame: int) -> bytes:
    decoder = wire.FrameDecoder(max_frame)
    while (frame := decoder.next_frame()) is None:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ControlError("connection closed before a whole frame arrived")
        decoder.feed(chunk)
    return frame


async def serve(path: Path, commands: dict[str, Command], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer control requests on ``path`` until cancelled; removes the socket on exit."""
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(10):
                    request = msgpack.unpackb(await _read_frame(stream, 1 << 16))
                command = commands.get(request.get("cmd"))
                if command is None:
                    reply = {"error": f"unknown command {request.get('cmd')!r}"}
                else:
                    reply = {"ok": await command(**request.get("args", {}))}
            except Exception as exc:  # a bad request must never take the node down
                log.warning("control request failed: %r", exc)
                reply = {"error": str(exc) or type(exc).__name__}
            try:
                await stream.send_all(wire.encode_frame(msgpack.packb(reply)))
            except trio.BrokenResourceError:
                pass

    try:
        task_status.started()
        await trio.serve_listeners(answer, [listener])
    finally:
        path.unlink(missing_ok=True)


async def ask(path: Path, cmd: str, **args: Any) -> Any:
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise ControlError(f"no node answers on {path}: {exc.strerror}") from None
    async with stream:
        await stream.send_all(wire.encode_frame(msgpack.packb({"cmd": cmd, "args": args})))
        reply = msgpack.unpackb(await _read_frame(stream, MAX_REPLY))
    if "error" in reply:
        raise ControlError(reply["error"])
    return reply["ok"]
