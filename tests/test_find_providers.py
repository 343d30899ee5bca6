"""p2p.mesh.find_providers asks the network even when this node holds provider records itself.

py-libp2p 0.8.1's lookup answers from local records alone when there are any; a gateway that
joined that answer with the adverts skipped every provider it had not heard of.  A stand-in
DHT plays py-libp2p's rule here, so the test needs no network.
"""

import trio
from libp2p.kad_dht.provider_store import ProviderStore
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from nacl.signing import SigningKey

from p2p import wire
from p2p.mesh import find_providers

KEY = wire.provider_key("ab" * 32)


def peer(seed: bytes) -> PeerInfo:
    return PeerInfo(ID.from_base58(wire.peer_id_from_public_key(bytes(SigningKey(seed * 32).verify_key))), [])


class LocalHost:
    def get_id(self) -> ID:
        return peer(b"z").peer_id


class LocalFirstDHT:
    """py-libp2p's find_providers: local records if any, else the network's (kept as local records)."""

    def __init__(self, network: list[PeerInfo]) -> None:
        self.provider_store = ProviderStore(host=LocalHost())
        self.network = network

    async def find_providers(self, key: str, count: int = 20) -> list[PeerInfo]:
        raw = bytes.fromhex(key)
        if local := self.provider_store.get_providers(raw):
            return local[:count]
        for info in self.network:
            self.provider_store.add_provider(raw, info)
        return self.network[:count]


def test_a_lookup_finds_the_networks_providers_and_keeps_the_ones_heard_of_before():
    heard_of, others = peer(b"a"), [peer(b"b"), peer(b"c")]
    dht = LocalFirstDHT(network=others)
    dht.provider_store.add_provider(bytes.fromhex(KEY), heard_of)  # a re-provide that landed here
    found = trio.run(find_providers, dht, KEY)
    assert set(found) == {p.peer_id.to_base58() for p in [heard_of, *others]}
    assert {p.peer_id for p in dht.provider_store.get_providers(bytes.fromhex(KEY))} == \
        {p.peer_id for p in [heard_of, *others]}  # nothing this node knew is lost
