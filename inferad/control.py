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
  one: the conversation is exactly the ``/inferad/submit/1.0.0``
  libp2p stream (docs/protocol.md).  The client sends the client-signed job
  (a ``job`` envelope); the node routes it like a job from the network
  (``Gateway.route_job``) and answers with ``token`` frames (unsigned), then
  either the worker-signed ``result`` envelope or an ``error`` frame
  ``{t: "error", code, message}`` with the job's error code (``max_tokens``,
  ``busy``, ``expired``, …), and closes.  ``pull`` (args ``{"ref": "sha256:…"}``) is the
  other: the node fetches the model into its cache from its peers
  (:meth:`inferad.transfer.Fetcher.pull`) and answers ``{"progress": {done, total, providers,
  rate}}`` frames, then ``{"ok": the cached model}`` or ``{"error": MESSAGE}``.

An unknown command or an unreadable request is answered ``{"error": …}``;
a streaming command that fails unexpectedly closes the connection.
The request frame must arrive within :data:`REQUEST_TIMEOUT_S`.

The server and :func:`ask` run under trio; :func:`connect` is blocking and
this module imports trio only inside the functions that need it, so
``inferad submit --node-home`` starts without trio's import (~0.2 s here).
:class:`Commands` are the plain commands a node answers, handed the roles
they read.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from inferad import __version__
from p2p import wire

if TYPE_CHECKING:
    from inferad.billing import Billing
    from inferad.membership import Membership
    from inferad.service import Activity
    from inferad.store import AsyncStore
    from inferad.verification import Verification
    from p2p.streams import FramedStream
    from scheduler.peers import PeerTable
    from scheduler.speeds import SpeedChecks

log = logging.getLogger("inferad.control")
MAX_REPLY = 64 << 20
REQUEST_TIMEOUT_S = 10
Command = Callable[..., Awaitable[Any]]  # (**args) -> the value of {"ok": VALUE}
StreamCommand = Callable[..., Awaitable[None]]  # (framed, **args): owns the connection after the request frame


class ControlError(Exception):
    """The node could not be asked, or answered with an error."""


@dataclass(kw_only=True, eq=False)
class Commands:
    """What ``inferad jobs``, ``status``, ``peers``, ``models``, ``proof`` and ``evidence`` answer.

    Args:   store: the job records.
            peers: the advert table.
            served: the engines, by model sha256 (their load and speed).
            activity: jobs running now.
            membership: this node's identity, addresses and rejected adverts.
            billing: stake and earnings (with a chain).
            verification: verification records, reputation and evidence (None without a chain).
            engine: ``llama`` or ``sim``.
            proof: fetches an account's reward proof (inferad.oracle.fetch_proof).
            speeds: what this node measured of each worker's speed (scheduler.speeds.SpeedChecks).
            connection: how this node is connected to a peer now (inferad.membership.Dialer.connection).
            relay_addrs: this node's addresses through relays (inferad.relay.Relays.addrs).
    ``api_url`` is set once the HTTP API listens.
    """

    store: AsyncStore
    peers: PeerTable
    served: dict[str, Any]
    activity: Activity
    membership: Membership
    billing: Billing
    verification: Verification | None
    engine: str
    proof: Callable[[str], Awaitable[dict]]
    speeds: SpeedChecks
    connection: Callable[[str], str | None]
    relay_addrs: Callable[[], list[str]]

    def __post_init__(self) -> None:
        self.started_at = time.time()
        self.api_url: str | None = None

    def table(self) -> dict[str, Command]:
        """The commands by name, for :func:`serve`."""
        return {"jobs": self.jobs, "status": self.status, "peers": self.peer_list, "models": self.models,
                "proof": self.proof, "evidence": self.evidence}

    def reputation(self, peer_id: str) -> float:
        return 0.5 if self.verification is None else self.verification.reputation(peer_id)

    async def jobs(self, job_id: str | None = None) -> list[dict]:
        """One job's record (or every job's), with its verification when there is a chain."""
        if job_id:
            record = await self.store.job(job_id)
            records = [record] if record else []
        else:
            records = await self.store.run(lambda: list(self.store.sync.jobs()))
        views = [r.to_json() for r in records]
        return views if self.verification is None else [self.verification.describe(v["job_id"], v) for v in views]

    async def receipt(self, job_id: str) -> dict | None:
        """The receipt of a finished job (inferad.receipt), or None while it has no result here."""
        from inferad.receipt import make

        record = await self.store.job(job_id)
        return None if record is None or record.result is None else make(record.job, record.result).to_json()

    async def status(self) -> dict:
        me = self.membership
        return {
            "peer_id": me.peer_id, "addrs": me.addrs, "version": __version__, "engine": self.engine,
            "uptime_s": int(time.time() - self.started_at), "active_jobs": self.activity.running,
            "reachability": me.reach(), "relay_addrs": self.relay_addrs(),
            "peers": len(self.peers.fresh(time.monotonic())), "adverts_rejected": me.adverts_rejected,
            "models": [{**s.describe(), "tokens_per_s": s.tokens_per_s, "queued": s.worker.load.queued,
                        "running": s.worker.load.running} for s in self.served.values()],
            "reputation": round(self.reputation(me.peer_id), 4),
            "verification": None if self.verification is None else self.verification.summary(),
            "chain": None if self.billing.view is None else await self.billing.status(),
            "api": self.api_url,
        }

    async def peer_list(self) -> list[dict]:
        now = time.monotonic()
        return [dict(wire.view(e.advert), advert_age_s=round(now - e.received_at, 1),
                     reputation=round(self.reputation(e.peer_id), 4), self=e.peer_id == self.membership.peer_id,
                     staked=self.billing.advert_is_staked(e.advert), connection=self.connection(e.peer_id),
                     **self.speeds.view(e.peer_id))
                for e in sorted(self.peers.fresh(now), key=lambda e: e.peer_id)]

    async def models(self) -> list[dict]:
        """One entry per file (sha256) on offer: its id and label (models.name_models), its providers."""
        from inferad.models import name_models

        offers: list[tuple[str, str]] = []
        providers: dict[str, list[dict]] = {}
        for entry in self.peers.fresh(time.monotonic()):
            for offer in entry.advert.models:
                if offer.adapter:  # a (model, adapter) pair: in `inferad peers`, not a model of its own
                    continue
                offers.append((offer.sha256, offer.name))
                providers.setdefault(offer.sha256, []).append({
                    "peer_id": entry.peer_id, "tokens_per_s": offer.tokens_per_s, "n_ctx": offer.n_ctx,
                    "queued": entry.advert.load.queued})
        return [{"id": m.id, "name": m.label, "sha256": m.sha256,
                 "providers": sorted(providers[m.sha256], key=lambda p: p["peer_id"])}
                for m in sorted(name_models(offers).values(), key=lambda m: m.id)]

    def health(self) -> dict:
        """``GET /health``: serving or draining, with peers and models."""
        return {"status": "draining" if self.activity.draining else "ok", "peer_id": self.membership.peer_id,
                "peers": len(self.peers.fresh(time.monotonic())),
                "models": [s.engine.ref.name for s in self.served.values()]}

    def offers(self) -> list[tuple[str, str]]:
        """(sha256, name) of every model on offer: the peers' adverts', then this node's."""
        offers = [(offer.sha256, offer.name) for entry in self.peers.fresh(time.monotonic())
                  for offer in entry.advert.models]
        return offers + [(served.engine.ref.sha256, served.engine.ref.name) for served in self.served.values()]

    async def is_settled(self, job_id: str) -> bool:
        return await self.store.is_settled(job_id)

    async def evidence(self, key: str) -> dict:
        if self.verification is None:
            raise ControlError("evidence needs a chain (start the node with --chain)")
        return await self.verification.fetch_and_check(key)


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
                    return await _run_stream(name, streams[name], framed, request.get("args", {}))
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


async def _run_stream(name: str, handler: StreamCommand, framed: FramedStream, args: dict) -> None:
    """A streaming command's own protocol has no place for a control error: a bug in one is
    logged and ends the connection (the client sees it closed), as a libp2p handler's would."""
    try:
        await handler(framed, **args)
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


def connect(path: Path, cmd: str, *, timeout: float, **args: Any) -> socket.socket:
    """Blocking: a connection to the node's socket at ``path`` with the request for the
    streaming command ``cmd`` (and its ``args``) sent; the caller speaks that command's protocol
    on it and closes it.  ``timeout`` (seconds) applies to each socket operation until changed.
    Raises ControlError when no node answers on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(wire.encode_frame(request(cmd, **args)))
    except OSError as exc:
        sock.close()
        raise ControlError(f"no node answers on {path}: {exc.strerror or exc}") from None
    return sock
