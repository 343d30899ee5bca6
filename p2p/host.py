"""A py-libp2p host that speaks standard libp2p, configured for inferad.

TCP, Noise only (py-libp2p also offers secio and plaintext by default; other
implementations reject them and plaintext is unsafe), Yamux, and one
connection per peer (py-libp2p otherwise waits 250 ms on every dial for a
second connection).  The node's Ed25519 key is its libp2p identity, so a peer
id names the key that signs the node's results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from nacl.signing import SigningKey

PROTOCOL_SUBMIT = "/inferad/submit/1.0.0"
log = logging.getLogger("inferad.p2p")


def _reattach_libp2p_logging() -> None:
    """``import libp2p`` gives its loggers their own handlers and stops
    propagation; hand their records back to the process's logging setup,
    at WARNING (some modules hard-code a chatty INFO level)."""
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p") and isinstance(logger, logging.Logger):
            logger.handlers.clear()
            logger.propagate = True
            if logger.level and logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    # Known noise, measured: the DHT warns on every query although results are
    # right, and pubsub logs an ERROR when a client without gossip connects.
    logging.getLogger("libp2p.kad_dht.kad_dht").setLevel(logging.ERROR)
    logging.getLogger("libp2p.host.basic_host").setLevel(logging.CRITICAL)
    # A failed stream negotiation is logged here and raised to us: we report it.
    logging.getLogger("libp2p.protocol_muxer.multiselect_client").setLevel(logging.CRITICAL)
    # So is a failed TCP dial ("cannot reach …"); and circuit relay v2 logs an ERROR for every
    # reservation stream its client closes, and a WARNING for every dial to a peer it has not
    # stored relay addresses of: what fails there is raised to inferad.relay, which reports it.
    for name in ("libp2p.transport.tcp.tcp", "libp2p.relay.circuit_v2.protocol", "libp2p.relay.circuit_v2.transport"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Hole punching says when it made a connection direct.
    logging.getLogger("libp2p.relay.circuit_v2.dcutr").setLevel(logging.INFO)


def _end_inbound_handlers_with_their_connection() -> None:
    """Free an inbound connection's slot when the connection closes.

    py-libp2p 0.8.1 keeps the handler of every inbound connection, and with it
    a slot of its inbound cap (max_connections - min_connections = 250),
    until the whole swarm stops.  So a node refuses every new connection
    after 250 in its lifetime, however many have closed: each CLI submit is
    one (found by the fuzz suite at about the 250th case).  The handler now
    ends when its connection closes; the cap still bounds connections open
    at once, and the connection pruner still bounds the total.
    """
    import contextvars

    import trio
    from libp2p.network.swarm import Swarm

    original_handle, original_upgrade = Swarm._do_handle_inbound_connection, Swarm.upgrade_inbound_raw_conn
    if getattr(original_handle, "inferad_patched", False):
        return
    established: contextvars.ContextVar[list] = contextvars.ContextVar("inferad_inbound_connection")

    async def upgrade(self: Any, raw_conn: Any, maddr: Any) -> Any:
        muxed = await original_upgrade(self, raw_conn, maddr)
        box = established.get(None)
        if box is not None:
            box.append(muxed)
        return muxed

    async def handle(self: Any, read_write_closer: Any, maddr: Any, failure_event: Any) -> None:
        box: list = []
        established.set(box)
        async with trio.open_nursery() as nursery:
            async def end_with_connection() -> None:
                while not box:
                    await trio.sleep(0.5)
                await box[0].event_closed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(end_with_connection)
            await original_handle(self, read_write_closer, maddr, failure_event)
            nursery.cancel_scope.cancel()

    handle.inferad_patched = True  # type: ignore[attr-defined]
    Swarm._do_handle_inbound_connection = handle
    Swarm.upgrade_inbound_raw_conn = upgrade


def make_host(key: SigningKey):
    """A libp2p host whose identity is ``key``; start it with ``host.run(listen_addrs=…)``."""
    _end_inbound_handlers_with_their_connection()
    # py-libp2p's Yamux sends a WINDOW_UPDATE frame after every read by default
    # (one extra encrypted write per message received: measured as the largest
    # CPU cost of an idle gossiping node).  go-yamux batches them at half the
    # window; py-libp2p's documented PY_YAMUX_RELEASE_ON_READ=0 does the same.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    from libp2p import new_host
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from libp2p.transport.tcp.tcp import TCP

    private = Ed25519PrivateKey.from_bytes(bytes(key))
    key_pair = KeyPair(private, private.get_public_key())
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX): Yamux},
        transports=[TCP()],
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    _reattach_libp2p_logging()  # after new_host: it imports the modules that set their own levels
    return host


def peer_info(multiaddr_text: str):
    """Parse ``/ip4/…/tcp/…/p2p/<id>`` into a PeerInfo; ValueError with a clear message."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(multiaddr_text))
    except Exception as exc:
        raise ValueError(
            f"{multiaddr_text!r} is not a full peer address like /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW… "
            f"({exc})"
        ) from None


def listen_addrs(texts: list[str]) -> list:
    """Parse listen addresses (``/ip4/0.0.0.0/tcp/4001``); ValueError naming the bad one."""
    import multiaddr

    parsed = []
    for text in texts:
        try:
            parsed.append(multiaddr.Multiaddr(text))
        except Exception as exc:
            raise ValueError(f"bad listen address {text!r}: {exc}") from None
    return parsed


CIRCUIT = "/p2p-circuit"


def is_relayed(addr: str) -> bool:
    """Whether the peer address ``addr`` reaches its peer through a relay (``…/p2p-circuit/p2p/<id>``)."""
    return CIRCUIT in addr


def dialable(addrs: list[str]) -> list[str]:
    """Wildcard listen addresses are not dialable; offer loopback for local clients first."""
    local = [a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/", 1) for a in addrs if "/ip4/0.0.0.0/" in a]
    return local + [a for a in addrs if "/ip4/0.0.0.0/" not in a]


@asynccontextmanager
async def running(host: Any, listen_addrs: list) -> AsyncIterator[Any]:
    """``host.run`` without its exception groups.

    py-libp2p yields from inside a nursery, so under trio's strict exception
    groups anything raised in the ``async with`` body comes out wrapped; a
    caller expects the exception it raised.
    """
    try:
        async with host.run(listen_addrs=listen_addrs):
            # Our membership logic dials peers itself; the stock auto-connector
            # would try to hold 50+ connections to whatever it has heard of.
            await host.get_network().auto_connector.stop()
            yield host
    except BaseExceptionGroup as group:
        if (leaf := sole_exception(group)) is group:
            raise
        raise leaf from None


def sole_exception(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside ``group``, through nested groups of one (trio wraps at every
    nursery), or ``group`` itself where it holds several."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    return leaf if not isinstance(leaf, BaseExceptionGroup) else group


def guarded(name: str, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """Wrap a stream handler so no exception reaches py-libp2p: one escaping a
    handler kills the whole host (measured), so a malformed message from one
    peer would take the node down."""
    if getattr(handler, "_inferad_guarded", False):
        return handler

    async def run(stream: Any) -> None:
        try:
            await handler(stream)
        except Exception as exc:
            if _malformed_by_the_peer(exc):
                log.warning("%s: the peer sent a malformed message (%s); resetting the stream", name, exc)
            elif _host_stopping(exc):
                log.info("%s: a stream arrived while the node stops; resetting it", name)
            else:  # a bug here: tests fail on this line (tests/conftest.py BUG_SIGNS)
                log.warning("%s handler failed (%s); resetting the stream", name, exc)
                log.debug("handler failure", exc_info=True)
            try:
                await stream.reset()
            except Exception:
                pass

    run._inferad_guarded = True  # type: ignore[attr-defined]
    return run


def _malformed_by_the_peer(exc: Exception) -> bool:
    """py-libp2p's own pubsub handler parses a peer's RPC with protobuf and lets its DecodeError
    escape: the peer's fault, answered by the reset, not a failure of the handler."""
    from google.protobuf.message import DecodeError

    return isinstance(exc, DecodeError)


def _host_stopping(exc: Exception) -> bool:
    """py-libp2p's pubsub starts a task per inbound stream in its service's nursery; a stream that
    arrives while the node stops finds that nursery closed (trio's RuntimeError says so)."""
    return isinstance(exc, RuntimeError) and "Nursery is closed to new arrivals" in str(exc)


def guard_all_handlers(host: Any) -> None:
    """Guard every handler registered on ``host``, py-libp2p's own included
    (its pubsub handler raises on a malformed RPC from a peer)."""
    handlers = host.get_mux().handlers
    for protocol, handler in list(handlers.items()):
        if handler is not None:
            handlers[protocol] = guarded(str(protocol), handler)
