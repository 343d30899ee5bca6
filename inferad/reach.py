"""Reachability: whether peers can dial this node (AutoNAT v1, github.com/libp2p/specs
``autonat/autonat-v1.md``, through py-libp2p's ``AutoNATService``), for its advert, its log and
``inferad status``.

Every node answers dial-back requests (``/libp2p/autonat/1.0.0``: the server dials the addresses
the client lists, at the IP it observed the client at, never over a relay).  Every
``CHECK_S`` seconds a node asks up to ``SERVERS`` inferad peers it is connected to to dial it
back: ``public`` when enough of them reach it, ``private`` (behind NAT or a firewall: peers
cannot open connections to it) when enough fail, ``unknown`` before that.  The spec asks for
more than three agreeing servers; a network with fewer peers decides on all of the ones it has.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import trio

from scheduler.peers import PeerTable

log = logging.getLogger("inferad.reach")

CHECK_S = 120  # seconds between two checks once decided
UNDECIDED_S = 30  # seconds before asking again after answers that disagreed
RETRY_S = 5  # seconds between looks for a first peer to ask
SERVERS = 4  # peers asked per check (the spec's "more than three")
STATUSES = {0: "unknown", 1: "public", 2: "private"}  # libp2p.host.autonat.AutoNATStatus


@dataclass(kw_only=True, eq=False)
class Reachability:
    """This node's reachability (``status``: unknown, public or private).

    Args:   host: the libp2p host (the AutoNAT handler is registered on it here).
            peers: the advert table: the inferad peers this node is connected to are the ones asked.
    """

    host: Any
    peers: PeerTable
    status: str = "unknown"

    def __post_init__(self) -> None:
        from libp2p.host.autonat.autonat import AutoNATService

        self._autonat = AutoNATService(self.host, serve=True)

    async def run(self) -> None:
        """Check now and then, forever; a change is logged."""
        from libp2p.peer.id import ID

        while True:
            connected = {p.to_base58() for p in self.host.get_connected_peers()}
            candidates = [e.peer_id for e in self.peers.fresh(time.monotonic()) if e.peer_id in connected]
            asked = random.sample(candidates, min(SERVERS, len(candidates)))
            if asked:
                self._autonat.dial_results.clear()  # this round's verdicts only
                self._autonat.confirmations = len(asked)
                status = STATUSES[await self._autonat.check_reachability([ID.from_base58(p) for p in asked])]
                if status != self.status:
                    log.info("reachability: %s (%d peer(s) asked to dial this node back)%s", status, len(asked),
                             "; peers cannot open connections to it: it is reached over the connections it "
                             "opens" if status == "private" else "")
                self.status = status
            await trio.sleep(RETRY_S if not asked else CHECK_S if self.status != "unknown" else UNDECIDED_S)
