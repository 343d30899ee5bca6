"""Circuit relay v2 (github.com/libp2p/specs ``relay/circuit-v2.md``): how nodes behind NAT are reached.

A node that peers cannot dial (``inferad.reach``: private) cannot be asked for
anything: it is reached only over connections it opened itself.  So it reserves a
slot on ``RELAYS`` relays (public nodes, which relay unless started with
``--no-relay-service``) and advertises, next to its own addresses, one
``<relay address>/p2p/<relay>/p2p-circuit/p2p/<itself>`` per reservation.  A peer
that wants it dials the relay and asks it (HOP CONNECT) to open a stream to the
node (STOP CONNECT); the two then run Noise and Yamux over that stream, end to
end, so a relay carries bytes it cannot read.

What each side runs, through py-libp2p's ``libp2p.relay.circuit_v2`` (0.8.1):

* every node: the STOP handler (``CircuitV2Protocol``), which takes relayed
  connections into the swarm like dialed ones;
* public nodes: the HOP handler (reservations and circuits), within the limits of
  config ``[relay]`` (reservations, circuits per reservation, seconds and bytes per
  circuit); while AutoNAT does not say the node is public it refuses HOP streams;
* private nodes: reservations on up to ``RELAYS`` public peers, renewed before they
  expire and moved to another relay when one goes away;
* a dialer: :meth:`Relays.dial` for an advert's ``/p2p-circuit`` address
  (py-libp2p's swarm skips those; ``CircuitV2Transport`` dials them);
* both ends of a relayed connection: hole punching (DCUtR, ``relay/DCUtR.md``):
  over the relayed connection they swap the addresses their routers map their
  listen ports to, then dial each other at once from those ports (a TCP
  simultaneous open, which routers that drop unsolicited inbound let through,
  as each has just seen its own side go out).  Where it works the connection is
  direct and the relayed one is closed a minute later; where the routers
  refuse (symmetric NAT), jobs stay relayed.  ``--no-hole-punching`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from inferad.config import Config
from p2p.host import CIRCUIT, guarded, is_relayed
from scheduler.peers import PeerTable

log = logging.getLogger("inferad.relay")

RELAYS = 2  # relays a node behind NAT reserves a slot on (the "at least two")
CHECK_S = 5  # seconds between two looks at the reservations
RENEW_MARGIN_S = 300  # renew a reservation this long before it expires
RESERVE_TIMEOUT_S = 15  # seconds for one relay to answer a reservation


def circuit_addr(relay_addr: str, peer_id: str) -> str:
    """``<relay_addr>/p2p-circuit/p2p/<peer_id>``: ``peer_id`` reached through the relay whose full
    address (ending in ``/p2p/<relay>``) is ``relay_addr``."""
    return f"{relay_addr}{CIRCUIT}/p2p/{peer_id}"


@dataclass(frozen=True)
class RelayLimits:
    """What a relay grants (config ``[relay]``).

    Attributes: reservations: nodes holding a slot at once.
                circuits: relayed connections open at once per reserved node.
                duration_s: seconds one relayed connection may last (0: no limit).
                bytes: bytes one relayed connection may carry, both ways together (0: no limit).
    """

    reservations: int = 32
    circuits: int = 16
    duration_s: int = 3600
    bytes: int = 1 << 30

    @classmethod
    def of(cls, config: Config) -> RelayLimits:
        return cls(config.relay_reservations, config.relay_circuits, config.relay_circuit_duration,
                   config.relay_circuit_bytes)


@dataclass(kw_only=True, eq=False)
class Relays:
    """This node's side of circuit relay v2; see the module docstring.

    Args:   host: the libp2p host.
            reach: this node's reachability now (``public``, ``private`` or ``unknown``).
            peers: the advert table: relays are chosen among the peers whose adverts say they are public.
            service: relay for others while public (``--no-relay-service``: False).
            hole_punching: upgrade relayed connections by DCUtR (``--no-hole-punching``: False).
            limits: what this node grants as a relay.
    """

    host: Any
    reach: Callable[[], str]
    peers: PeerTable
    service: bool = True
    hole_punching: bool = True
    limits: RelayLimits = field(default_factory=RelayLimits)
    reserved: dict[str, tuple[str, float]] = field(default_factory=dict)  # relay -> (its address, expiry)
    refused: dict[str, float] = field(default_factory=dict)  # relay -> when it may be asked again

    def __post_init__(self) -> None:
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
        from libp2p.relay.circuit_v2.resources import RelayLimits as Limits
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport

        limits = Limits(duration=self.limits.duration_s, data=self.limits.bytes,
                        max_circuit_conns=self.limits.circuits, max_reservations=self.limits.reservations)
        self._protocol = CircuitV2Protocol(self.host, limits=limits, allow_hop=self.service)
        # STOP only: the transport must not reserve a slot on every relay it dials through.
        self._transport = CircuitV2Transport(self.host, self._protocol, RelayConfig(roles=RelayRole.STOP,
                                                                                    limits=limits))
        self._dcutr = DCUtRProtocol(self.host) if self.hole_punching else None
        self.peer_id = self.host.get_id().to_base58()

    def addrs(self) -> list[str]:
        """This node's ``/p2p-circuit`` addresses, one per live reservation (for its advert)."""
        now = time.time()
        return [circuit_addr(addr, self.peer_id) for addr, expires in self.reserved.values() if expires > now]

    async def run(self) -> None:
        """Serve STOP (and HOP while public), and keep ``RELAYS`` reservations while private."""
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
        from libp2p.tools.anyio_service import background_trio_service

        async with contextlib.AsyncExitStack() as services:
            for service in filter(None, (self._protocol, self._dcutr)):
                await services.enter_async_context(background_trio_service(service))
                await service.event_started.wait()
            for protocol, handler in self.host.get_mux().handlers.items():  # guard py-libp2p's STOP handler
                self.host.get_mux().handlers[protocol] = guarded(str(protocol), handler)
            if self.service:
                hop = self._protocol._handle_hop_stream
                self.host.set_stream_handler(PROTOCOL_ID, guarded("relay", self._hop_while_public(hop)))
            while True:
                if self.reach() == "private":
                    await self._keep_reservations()
                elif self.reserved:
                    log.info("reachable directly: dropping %d relay reservation(s)", len(self.reserved))
                    self.reserved.clear()
                await trio.sleep(CHECK_S)

    def _hop_while_public(self, hop: Callable[[Any], Any]) -> Callable[[Any], Any]:
        async def serve(stream: Any) -> None:
            if self.reach() != "public":  # a node behind NAT would relay badly, and nobody asked it to
                await stream.reset()
                return
            await hop(stream)
        return serve

    async def _keep_reservations(self) -> None:
        now = time.time()
        connected = {p.to_base58() for p in self.host.get_connected_peers()}
        for relay in [r for r, (_, expires) in self.reserved.items() if expires <= now or r not in connected]:
            log.info("relay %s is gone or its reservation expired: reserving elsewhere", relay)
            del self.reserved[relay]
        due = [(r, addr) for r, (addr, expires) in self.reserved.items() if expires - now < RENEW_MARGIN_S]
        fresh = [(r, addr) for r, addr in self._candidates(connected)
                 if r not in self.reserved and self.refused.get(r, 0) <= now]
        for relay, addr in due + fresh[:max(0, RELAYS - len(self.reserved))]:
            await self._reserve(relay, addr)

    def _candidates(self, connected: set[str]) -> list[tuple[str, str]]:
        """(peer id, its first own address) of the public peers, the connected ones first."""
        public = [e for e in self.peers.fresh(time.monotonic()) if e.advert.reach == "public"
                  and e.peer_id != self.peer_id and any(not is_relayed(a) for a in e.advert.addrs)]
        public.sort(key=lambda e: e.peer_id not in connected)
        return [(e.peer_id, next(a for a in e.advert.addrs if not is_relayed(a))) for e in public]

    async def _reserve(self, relay: str, addr: str) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

        from p2p.host import peer_info

        renewing = relay in self.reserved
        try:
            with trio.fail_after(RESERVE_TIMEOUT_S):
                await self.host.connect(peer_info(addr))
                stream = await self.host.new_stream(ID.from_base58(relay), [TProtocol(PROTOCOL_ID)])
                try:
                    granted = await self._transport._make_reservation(stream, ID.from_base58(relay))
                finally:
                    await stream.close()
        except Exception as exc:  # unreachable or refused: another relay is tried, this one later
            granted = False
            log.debug("reservation on %s failed: %r", relay, exc)
        expires = float(self._transport._reservations.get(ID.from_base58(relay), 0)) if granted else 0.0
        if expires > time.time():
            self.reserved[relay] = (addr, expires)
            if not renewing:
                log.info("reserved a relay slot on %s: reachable at %s", relay, circuit_addr(addr, self.peer_id))
        else:
            self.reserved.pop(relay, None)
            self.refused[relay] = time.time() + 60
            log.info("relay %s refused a reservation or did not answer; trying another", relay)

    async def dial(self, addr: str) -> None:
        """Connect to the peer at the ``/p2p-circuit`` address ``addr`` through its relay.
        Raises ConnectionError (py-libp2p's) when the relay or the peer refuses."""
        import multiaddr

        await self._transport.dial(multiaddr.Multiaddr(addr))
