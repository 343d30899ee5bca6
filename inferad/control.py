"""The local control socket: how CLI commands ask a running node.

LevelDB admits one process at a time, so while a node runs, ``inferad jobs``
and friends ask it over ``<home>/control.sock``, a Unix socket (mode 0600:
only the home's owner may ask).  A client on the same machine also submits
jobs here: no libp2p connection, no libp2p imports, a few milliseconds.

Protocol.  Every message is a frame in the wire framing (unsigned-varint
length, then msgpack; at most the node's ``limits.max_frame`` bytes).  The
client opens a connection and sends one request frame
``{"cmd": NAME, "args": {...}}`` (``args`` optional).  Then either:

- a plain command (``jobs``, ``status``, ``peers``, ``models``, ``proof``,
  ``evidence``) answers one frame, ``{"ok": VALUE}`` or
  ``{"error": MESSAGE}``, and the connection ends;
- a streaming command hands the connection to the node's handler, which
  speaks that command's own protocol from the next frame on.  ``submit`` is
  the only one: the conversation is exactly the ``/inferad/submit/1.0.0``
  libp2p stream (docs/protocol.md).  The client sends the client-signed job
  (a ``job`` envelope); the node routes it like a job from the network
  (``Node.route_job``) and answers with ``token`` frames (unsigned), then
  either the worker-signed ``result`` envelope or an ``error`` frame
  ``{t: "error", code, message}`` with the job's error code (``max_tokens``,
  ``busy``, ``expired``, …), and closes.

An unknown command or an unreadable request is answered ``{"error": …}``;
a streaming command that fails unexpectedly closes the connection.
The request frame must arrive within :data:`REQUEST_TIMEOUT_S`.

The server and :func:`ask` run under trio; :func:`connect` is blocking and
this module imports trio only inside the functions that need it, so
``inferad submit --node-home`` starts without trio's import (~0.2 s here).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from p2p import wire

if TYPE_CHECKING:
    from p2p.streams import FramedStream

log = logging.getLogger("inferad.control")
MAX_REPLY = 64 << 20
REQUEST_TIMEOUT_S = 10
Command = Callable[..., Awaitable[Any]]  # (**args) -> the value of {"ok": VALUE}
StreamCommand = Callable[["FramedStream"], Awaitable[None]]  # owns the connection after the request frame


class ControlError(Exception):
    """The node could not be asked, or answered with an error."""


def request(cmd: str, **args: Any) -> bytes:
    """The payload of the frame that opens every conversation: ``{"cmd": cmd, "args": args}``."""
    return msgpack.packb({"cmd": cmd, "args": args})


async def serve(path: Path, commands: dict[str, Command], streams: dict[str, StreamCommand] | None = None, *,
                max_frame: int = wire.DEFAULT_MAX_FRAME, task_status: Any = None) -> None:
    """Answer control requests on ``path`` until cancelled; removes the socket on exit.

    ``commands`` answer one value; ``streams`` take over the connection
    after the request frame (see the module docstring).  Start it with
    ``nursery.start`` to wait until the socket listens.
    """
    import trio

    from p2p.streams import SocketFramedStream, StreamClosed

    streams = streams or {}
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
        framed = SocketFramedStream(stream, max_frame)
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    request = msgpack.unpackb(await framed.receive())
                name = request.get("cmd")
                if name in streams:
                    return await _run_stream(name, streams[name], framed)
                command = commands.get(name)
                if command is None:
                    reply = {"error": f"unknown command {name!r}"}
                else:
                    reply = {"ok": await command(**request.get("args", {}))}
            except Exception as exc:  # a bad request must never take the node down
                log.warning("control request failed: %r", exc)
                reply = {"error": str(exc) or type(exc).__name__}
            try:
                await framed.send(msgpack.packb(reply))
            except StreamClosed:
                pass

    try:
        if task_status is not None:
            task_status.started()
        await trio.serve_listeners(answer, [listener])
    finally:
        path.unlink(missing_ok=True)


async def _run_stream(name: str, handler: StreamCommand, framed: FramedStream) -> None:
    """A streaming command's own protocol has no place for a control error: a bug in one is
    logged and ends the connection (the client sees it closed), as a libp2p handler's would."""
    try:
        await handler(framed)
    except Exception:
        log.exception("control stream %r failed", name)


async def ask(path: Path, cmd: str, **args: Any) -> Any:
    """The value a plain command answers; ControlError when no node answers or it answers an error."""
    import trio

    from p2p.streams import SocketFramedStream, StreamClosed

    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise ControlError(f"no node answers on {path}: {exc.strerror or exc}") from None
    framed = SocketFramedStream(stream, MAX_REPLY)
    try:
        await framed.send(request(cmd, **args))
        reply = msgpack.unpackb(await framed.receive())
    except StreamClosed as exc:
        raise ControlError(f"the node on {path} closed the connection: {exc}") from None
    finally:
        await framed.close()
    if "error" in reply:
        raise ControlError(reply["error"])
    return reply["ok"]


def connect(path: Path, cmd: str, *, timeout: float) -> socket.socket:
    """Blocking: a connection to the node's socket at ``path`` with the request for the
    streaming command ``cmd`` sent; the caller speaks that command's protocol on it and
    closes it.  ``timeout`` (seconds) applies to each socket operation until changed.
    Raises ControlError when no node answers on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(wire.encode_frame(request(cmd)))
    except OSError as exc:
        sock.close()
        raise ControlError(f"no node answers on {path}: {exc.strerror or exc}") from None
    return sock
