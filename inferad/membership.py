"""Membership: who is in the mesh and how to reach them (DESIGN §4, §5).

- **Adverts.** Every node publishes a signed advert on ``/inferad/adverts/1``
  every ``advert_interval`` seconds, and sooner (at most twice per interval)
  when its load changes; every node validates the adverts it hears (signer,
  sender, age, catalog names bound to their sha256, EIP-55 address) and keeps
  the fresh ones in its :class:`scheduler.peers.PeerTable`.  A peer that
  misses three adverts has left.
- **Provider records.** Every served model is provided in the DHT under
  ``wire.provider_key(sha256)`` and provided again every ``REPROVIDE_S``.
- **Connections.** The node keeps dialing its bootstrap nodes (with backoff),
  the peers it knew before a restart until one answers, and a few advertised
  peers; :class:`Dialer` opens protocol streams to a peer by its advert.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from inferad import __version__
from inferad.admission import checksummed, now_ms
from inferad.config import Config
from inferad.models import ModelError, check_label
from inferad.store import AsyncStore
from p2p import wire
from p2p.host import is_relayed, peer_info
from p2p.mesh import PROTOCOL_SETTLEMENT, TOPIC_ADVERTS, GossipSettings
from p2p.streams import FramedStream
from scheduler.peers import PeerTable

log = logging.getLogger("inferad.membership")
REPROVIDE_S = 60
MEMBERSHIP_S = 3
MAX_DIALED_PEERS = 8



@dataclass(kw_only=True, eq=False)
class Dialer:
    """Streams to peers by peer id, dialed at the addresses of their advert when not connected yet.

    Args:   host: the libp2p host.
            peers: the advert table.
            key: this node's signing key (for :meth:`ask`).
            connect_timeout: seconds to connect and open a stream.
            max_frame: the largest frame read back (bytes).
            dial_relayed: connects through a relay to a ``/p2p-circuit`` address (inferad.relay.Relays.dial).
    """

    host: Any
    peers: PeerTable
    key: Any
    connect_timeout: float
    max_frame: int
    dial_relayed: Callable[[str], Awaitable[None]] | None = None

    async def connect(self, peer_id: str) -> None:
        """Dial ``peer_id`` at its advertised addresses until one answers: its own first, or its
        relays' first when its advert says it is behind NAT (nothing to do for a peer without an
        advert, or one already connected). Raises what py-libp2p raises for the last address."""
        from libp2p.peer.id import ID

        entry = self.peers.get(peer_id)
        if entry is None or self.host.get_network().connections.get(ID.from_base58(peer_id)):
            return
        addrs = sorted(entry.advert.addrs, key=lambda a: is_relayed(a) != (entry.advert.reach == "private"))
        for i, addr in enumerate(addrs):
            try:
                if is_relayed(addr):
                    if self.dial_relayed is not None:
                        await self.dial_relayed(addr)
                        return
                else:
                    await self.host.connect(peer_info(addr))
                    return
            except Exception:
                if i == len(addrs) - 1:
                    raise
                log.debug("cannot reach %s at %s: trying its next address", peer_id, addr)

    def connection(self, peer_id: str) -> str | None:
        """How this node is connected to ``peer_id`` now: ``direct``, ``relayed`` (through a relay:
        inferad.relay) or None."""
        from libp2p.network.connection.swarm_connection import ConnectionType
        from libp2p.peer.id import ID

        conns = self.host.get_network().connections.get(ID.from_base58(peer_id))
        if not conns:
            return None
        conns = conns if isinstance(conns, list) else [conns]
        relayed = all(c.get_connection_type() == ConnectionType.RELAYED
                      or any(is_relayed(str(a)) for a in c.get_transport_addresses()) for c in conns)
        return "relayed" if relayed else "direct"

    async def new_stream(self, peer_id: str, protocol: str) -> Any:
        """A new stream for ``protocol`` on the connection to ``peer_id``."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        return await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])

    async def open(self, peer_id: str, protocol: str) -> Any:
        """Connect to ``peer_id`` if need be and open a ``protocol`` stream to it; trio.TooSlowError
        after ``connect_timeout`` seconds, else raises as :meth:`connect`."""
        with trio.fail_after(self.connect_timeout):
            await self.connect(peer_id)
            return await self.new_stream(peer_id, protocol)

    async def ask_raw(self, peer_id: str, request: bytes, protocol: str = PROTOCOL_SETTLEMENT, *,
                      timeout: float = 30) -> bytes:
        """Send one signed request on ``protocol``; the one frame that answers it.

        Raises: trio.TooSlowError (no connection within ``connect_timeout`` s, or no answer within
        ``timeout`` s), StreamClosed (the peer closed or reset the stream), and py-libp2p's
        errors for a peer that cannot be dialed.
        """
        framed = FramedStream(await self.open(peer_id, protocol), self.max_frame)
        try:
            await framed.send(request)
            with trio.fail_after(timeout):
                return await framed.receive()
        finally:
            await framed.close()

    async def ask(self, peer_id: str, message: Any) -> wire.Envelope:
        """``message``, signed by this node, on /inferad/settlement; the decoded answer (error
        frames included). Raises as :meth:`ask_raw`, and WireError for an undecodable answer."""
        return wire.decode(await self.ask_raw(peer_id, wire.sign(message, self.key)), max_size=self.max_frame)


@dataclass(kw_only=True, eq=False)
class Membership:
    """This node's adverts, its view of the others', its provider records and its connections.

    Args:   host, pubsub, dht: py-libp2p's, running.
            peers: the advert table this role fills and expires.
            key, eth_address: this node's signing key and Ethereum account (in its adverts).
            config: advert interval, limits, bootstrap nodes, timeouts.
            store: remembers peers' addresses across restarts.
            offers: the models this node serves, as advertised.
            load: this node's queue and running jobs, summed over its engines.
            engine, hardware, addrs: what the advert says of this node.
            reach: whether peers can dial it (inferad.reach), as the advert says it.
            relayed: its ``/p2p-circuit`` addresses (inferad.relay), advertised after its own.
    """

    host: Any
    pubsub: Any
    dht: Any
    peers: PeerTable
    key: Any
    eth_address: str
    config: Config
    store: AsyncStore
    offers: Callable[[], tuple[wire.ModelOffer, ...]]
    load: Callable[[], wire.Load]
    engine: str
    hardware: wire.Hardware
    addrs: list[str]
    reach: Callable[[], str] = lambda: "unknown"
    relayed: Callable[[], list[str]] = list

    def __post_init__(self) -> None:
        self.peer_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))
        self.adverts_rejected = 0
        self._advert_seq = 0
        self._load_changed = trio.Event()

    async def run(self) -> None:
        """Advertise, listen to adverts, expire peers, stay connected and provide the served
        models, until cancelled. Each loop logs and retries what fails; none raises."""
        self.pubsub.set_topic_validator(TOPIC_ADVERTS, self.validate, is_async_validator=False)
        adverts = await self.pubsub.subscribe(TOPIC_ADVERTS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_adverts, adverts)
            nursery.start_soon(self._expire_peers)
            nursery.start_soon(self._publish_adverts)
            nursery.start_soon(self._stay_connected)
            nursery.start_soon(self._provide_models)

    # ------------------------------------------------------------------ adverts

    def advert(self) -> wire.Advert:
        self._advert_seq = max(self._advert_seq + 1, now_ms())  # grows across restarts too
        config = self.config
        return wire.Advert(
            peer_id=self.peer_id, addrs=tuple((self.addrs + self.relayed())[:16]), eth=self.eth_address,
            engine=self.engine,
            models=self.offers(), hardware=self.hardware, load=self.load(), version=__version__,
            seq=self._advert_seq, ts=now_ms(), interval=config.advert_interval,
            limits=wire.Limits(max_tokens=config.max_tokens, max_ttl_s=config.max_job_ttl,
                               clock_skew_s=config.clock_skew, max_frame=config.max_frame),
            reach=self.reach(),
        )

    def load_changed(self) -> None:
        """Advertise soon: this node's load changed (or a newcomer should learn of it)."""
        self._load_changed.set()

    async def _publish_adverts(self) -> None:
        while True:
            try:
                await self.pubsub.publish(TOPIC_ADVERTS, wire.sign(self.advert(), self.key))
            except Exception as exc:  # no peers yet, or a router hiccup: the next period retries
                log.debug("advert not published: %r", exc)
            # On load changes too, but at most twice per interval however busy:
            # gossip costs every node CPU, and gateways count what they send.
            spacing = self.config.advert_interval / 2
            await trio.sleep(spacing)
            self._load_changed = trio.Event()
            with trio.move_on_after(self.config.advert_interval - spacing):
                await self._load_changed.wait()

    def validate(self, forwarder: Any, msg: Any) -> bool:
        """Gossipsub topic validator: False rejects (and feeds peer scoring)."""
        try:
            envelope = wire.decode(msg.data, max_size=GossipSettings.max_message_bytes)
            advert = envelope.message
            if envelope.type != "advert":
                raise wire.WireError("not an advert")
            from libp2p.peer.id import ID

            if advert.peer_id != envelope.signer_peer_id or advert.peer_id != ID(msg.from_id).to_base58():
                raise wire.WireError("advert is not by the peer that signed and sent it")
            now = now_ms()
            if advert.ts < now - 3 * advert.interval * 1000:
                raise wire.WireError("stale advert")
            if advert.ts > now + self.config.clock_skew * 1000:
                raise wire.WireError("advert from the future")
            for offer in advert.models:  # a catalog name on other bytes: an impostor (DESIGN §2c)
                check_label(offer.name, offer.sha256)
            if advert.eth != checksummed(advert.eth):  # stakes are read by address; web3 takes EIP-55 only
                raise wire.WireError(f"advert's eth address {advert.eth} is not in its EIP-55 checksum form")
        except (wire.WireError, ValueError, ModelError) as exc:
            self.adverts_rejected += 1
            log.debug("rejected advert from %s: %s", forwarder, exc)
            return False
        return True

    async def _receive_adverts(self, subscription: Any) -> None:
        while True:
            msg = await subscription.get()
            try:
                advert = wire.decode(msg.data).message  # validated on the way in
            except wire.WireError:
                continue
            known = self.peers.get(advert.peer_id) is not None
            if self.peers.update(advert, time.monotonic()) and not known and advert.peer_id != self.peer_id:
                log.info("peer %s joined", advert.peer_id)
                self.load_changed()  # advertise soon, so the newcomer learns of us within seconds
                await self.store.remember_peer(advert.peer_id, list(advert.addrs))

    async def _expire_peers(self) -> None:
        while True:
            await trio.sleep(1)
            for peer_id in self.peers.expire(time.monotonic()):
                log.info("peer %s left (missed 3 adverts)", peer_id)

    # ------------------------------------------------------------------ connections and the DHT

    async def _stay_connected(self) -> None:
        """Stay connected: bootstrap nodes (retry with backoff), peers known before a restart
        until one answers, and a few advertised peers: of two dialable peers the one with the
        larger id dials; a node behind NAT dials the dialable ones itself, and nobody dials it
        (it is reached through its relays, on demand)."""
        retry_at: dict[str, tuple[float, float]] = {}  # addr -> (when, delay)
        remembered = [f"{addrs[0]}" for addrs in (await self.store.remembered_peers()).values() if addrs]
        while True:
            now = time.monotonic()
            connected = {p.to_base58() for p in self.host.get_connected_peers()}
            alone = not [e for e in self.peers.fresh(now) if e.peer_id != self.peer_id]
            wanted = list(self.config.bootstrap) + (remembered if alone else [])
            private = self.reach() == "private"
            for entry in self.peers.fresh(now):
                direct = [a for a in entry.advert.addrs if not is_relayed(a)]
                if ((entry.peer_id > self.peer_id or private) and entry.advert.reach != "private"
                        and entry.peer_id not in connected and direct and len(connected) < MAX_DIALED_PEERS):
                    wanted.append(direct[0])
            for addr in wanted:
                when, delay = retry_at.get(addr, (0.0, 1.0))
                if when > now or addr.rsplit("/p2p/", 1)[-1] in connected:
                    continue
                if await self._dial(addr):
                    retry_at.pop(addr, None)
                else:
                    retry_at[addr] = (now + delay, min(delay * 2, 60.0))
            await trio.sleep(MEMBERSHIP_S)

    async def _dial(self, addr: str) -> bool:
        try:
            info = peer_info(addr)
            with trio.fail_after(self.config.connect_timeout):
                await self.host.connect(info)
            await self.dht.add_peer(info.peer_id)
            log.debug("connected to %s", addr)
            return True
        except Exception as exc:  # unreachable, refused, timed out: retried with backoff
            log.info("cannot reach %s: %s", addr, exc or type(exc).__name__)
            return False

    async def _provide_models(self) -> None:
        while True:
            for offer in self.offers():
                try:
                    with trio.move_on_after(30):
                        await self.dht.provide(wire.provider_key(offer.sha256))
                except Exception as exc:
                    log.debug("provide %s failed: %r", offer.sha256[:12], exc)
            await trio.sleep(REPROVIDE_S if self.host.get_connected_peers() else MEMBERSHIP_S)
