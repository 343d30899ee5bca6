"""Gossipsub and the Kademlia DHT, configured on purpose (DESIGN §5).

py-libp2p's defaults are tuned for something else: a 120 s heartbeat (a mesh
takes minutes to form), a 10 messages/s/topic rate limit that also counts
one's own and forwarded messages (twenty nodes advertising every 2 s already
reach it, and the excess is dropped silently).  Every parameter we rely on is
set here, with the reason.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

TOPIC_ADVERTS = "/inferad/adverts/1"
TOPIC_ATTESTATIONS = "/inferad/attestations/1"
PROTOCOL_EXEC = "/inferad/exec/1.0.0"
PROTOCOL_SETTLEMENT = "/inferad/settlement/1.0.0"
PROTOCOL_VERIFY = "/inferad/verify/1.0.0"
log = logging.getLogger("inferad.mesh")

OWN_RECORD_S = 10.0  # seconds this node's signed peer record is reused in gossip RPCs


@dataclass(frozen=True)
class GossipSettings:
    heartbeat_s: int = 1  # py-libp2p: 120 s; go/js: 1 s
    degree: int = 4  # D, D_low, D_high
    degree_low: int = 3
    degree_high: int = 6
    # Per sender and topic, counting forwarded messages: must exceed
    # (nodes / advert period) with room for bursts.  py-libp2p: 10.
    max_messages_per_topic_per_s: float = 200.0
    max_message_bytes: int = 64 * 1024  # adverts are ~1 KiB
    # Scores come from reputation (P6, see running_mesh) and IP colocation
    # (P7, below): a peer with reputation r scores 20 (r - 0.5); one proven
    # lie takes it to about -9.
    gossip_threshold: float = -5.0
    publish_threshold: float = -8.0
    # IP-colocation (eclipse) protection, gossipsub v1.1's P7: when more than
    # ``ip_colocation_limit`` peers share one IP address, each of them scores
    # ``ip_colocation_weight * excess**2`` lower, so one machine cannot field
    # enough identities to surround a node (3 over the limit: -9, under the
    # publish threshold unless reputation lifts it); py-libp2p's mesh also
    # prefers peers on other IPs when it grafts and prunes.  10 is py-libp2p's
    # default and the value Ethereum's consensus clients use.  0 turns both
    # off: only for networks whose nodes all run on one machine (loopback
    # devnets and tests), where every peer has the same IP.
    ip_colocation_limit: int = 10
    ip_colocation_weight: float = 1.0

    @property
    def ip_colocation_protection(self) -> bool:
        """Whether gossip scores down peers that share an IP (off only for one-machine networks)."""
        return self.ip_colocation_limit > 0


def _cache_sender_record_checks() -> None:
    """Verify each peer's signed peer record once, not on every gossip RPC.

    py-libp2p checks the Ed25519 signature of the sender's signed peer record
    attached to every pubsub RPC, twice for control messages: a fifth of the
    CPU of an idle gossiping node (measured with py-spy, 20 nodes).  The
    record is the same bytes until the peer's addresses change, so a (host,
    peer, record) triple that verified once is accepted again without
    re-verifying; anything new goes through py-libp2p's own check.
    """
    import libp2p.pubsub.gossipsub as gossipsub_module
    import libp2p.pubsub.pubsub as pubsub_module

    original = pubsub_module.maybe_consume_signed_record
    if getattr(original, "inferad_cached", False):
        return
    verified: OrderedDict[tuple, None] = OrderedDict()

    def consume(msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key = (id(host), peer_id, msg.senderRecord)
        if key in verified:
            verified.move_to_end(key)
            return True
        ok = original(msg, host, peer_id)
        if ok:
            verified[key] = None
            if len(verified) > 4096:
                verified.popitem(last=False)
        return ok

    consume.inferad_cached = True  # type: ignore[attr-defined]
    pubsub_module.maybe_consume_signed_record = consume
    gossipsub_module.maybe_consume_signed_record = consume


def _cache_own_sender_record() -> None:
    """Attach this node's own signed peer record to gossip RPCs without rebuilding it each time.

    py-libp2p lists the host's addresses (multiaddrs built from its sockets) and compares them
    with its cached record before every pubsub RPC it sends, and gossipsub v1.2 sends an IDONTWANT
    to every mesh peer for every message it receives: with 20 nodes advertising every 2 s, a
    quarter of an idle node's CPU (0.1 core each, py-spy, 2026-12-01).  The record is reused for
    ``OWN_RECORD_S`` seconds; an address change reaches peers that much later at most.
    """
    import libp2p.pubsub.gossipsub as gossipsub_module
    import libp2p.pubsub.pubsub as pubsub_module

    original = pubsub_module.env_to_send_in_RPC
    if getattr(original, "inferad_cached", False):
        return
    cached: dict[int, tuple[float, bytes]] = {}

    def envelope(host: Any) -> tuple[bytes, bool]:
        now = time.monotonic()
        hit = cached.get(id(host))
        if hit is not None and now - hit[0] < OWN_RECORD_S:
            return hit[1], False
        data, fresh = original(host)
        cached[id(host)] = (now, data)
        return data, fresh

    envelope.inferad_cached = True  # type: ignore[attr-defined]
    pubsub_module.env_to_send_in_RPC = envelope
    gossipsub_module.env_to_send_in_RPC = envelope


def score_params(settings: GossipSettings, app_score: Callable[[Any], float] | None = None) -> Any:
    """py-libp2p's ``ScoreParams`` for ``settings``: reputation (P6) and IP colocation (P7) only."""
    from libp2p.pubsub.score import ScoreParams

    colocation = settings.ip_colocation_protection
    return ScoreParams(app_specific_score_fn=app_score, p6_appl_slack_weight=1.0 if app_score else 0.0,
                       p7_ip_colocation_weight=settings.ip_colocation_weight if colocation else 0.0,
                       p7_ip_colocation_threshold=settings.ip_colocation_limit,
                       gossip_threshold=settings.gossip_threshold, publish_threshold=settings.publish_threshold)


@asynccontextmanager
async def running_mesh(host: Any, settings: GossipSettings,
                       app_score: Callable[[Any], float] | None = None) -> AsyncIterator[tuple[Any, Any]]:
    """Start pubsub (gossipsub v1.2/1.1/1.0, strict signing) and a server-mode
    DHT on ``host``; yields (pubsub, dht) and stops both on exit.

    ``app_score(peer ID)`` is gossipsub's application-specific score (P6): the
    node's reputation of the peer; peers crowding one IP lose score too (P7,
    see ``GossipSettings.ip_colocation_limit``).  Below ``gossip_threshold`` a peer gets no
    gossip from us, below ``publish_threshold`` none of our own messages;
    nothing is graylisted, so a demoted peer's adverts are still heard and
    every node keeps seeing (and refusing) it."""
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    _cache_sender_record_checks()
    _cache_own_sender_record()
    if not settings.ip_colocation_protection:
        log.warning("gossip IP-colocation (eclipse) protection is off (gossip.ip_colocation_limit = 0): "
                    "right for a network on one machine only; remove the setting for the internet")
    router = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=settings.degree, degree_low=settings.degree_low, degree_high=settings.degree_high,
        heartbeat_interval=settings.heartbeat_s, heartbeat_initial_delay=0.1,
        max_messages_per_topic_per_second=settings.max_messages_per_topic_per_s,
        # Off only on one-machine networks (every peer on 127.0.0.1), where
        # IP-diversity rules would keep the mesh from forming.
        eclipse_protection_enabled=settings.ip_colocation_protection,
        # Peer exchange: a node that prunes a peer from its mesh tells it of
        # others, so newcomers that only know the bootstrap node spread out.
        do_px=True,
        score_params=score_params(settings, app_score),
    )
    pubsub = Pubsub(host, router, strict_signing=True, max_inbound_rpc_size=4 * settings.max_message_bytes)
    dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await stack.enter_async_context(background_trio_service(dht))
        await pubsub.wait_until_ready()
        yield pubsub, dht


async def find_providers(dht: Any, key: str, count: int = 20) -> list[str]:
    """Peer ids providing ``key`` (a hex multihash: wire.provider_key), asked of the network
    every time and joined with this node's own records, de-duplicated (py-libp2p returns repeats).

    py-libp2p 0.8.1 answers a lookup from its local provider records alone whenever it holds
    any for the key, and keeps every provider a lookup finds as a local record.  So a node that
    had learned of one provider (its first lookup, or a peer's ADD_PROVIDER, which lands on the
    nodes close to the key) never asked the network again, and a gateway joining that answer
    with the adverts skipped every other provider: a worker that re-provided at the right moment
    became a gateway's only candidate (found by tests/test_worker_adversaries.py).  The local
    records are set aside while the network is asked, then merged back.
    """
    store, raw = dht.provider_store, bytes.fromhex(key)
    local = store.providers.pop(raw, None)
    try:
        infos = list(await dht.find_providers(key, count=count))
    finally:
        if local:
            kept = store.providers.setdefault(raw, {})
            for peer, record in local.items():
                kept.setdefault(peer, record)
    seen: dict[str, None] = {}
    for info in [*infos, *store.get_providers(raw)]:
        seen.setdefault(info.peer_id.to_base58())
    return list(seen)[:count]
