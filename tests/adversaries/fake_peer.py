"""A misbehaving mesh peer, for tests only: it joins a network and publishes bad adverts.

    python -m tests.adversaries.fake_peer BOOTSTRAP_ADDR MODE SECONDS [gated]

Modes: bad_signature, stale, oversized, wrong_schema, future (ts beyond the
allowed clock skew), not_an_advert (another signed message type on the
adverts topic), relayed (a valid advert of another peer, published by this
one), unchecksummed_eth (its Ethereum address in lower case, not in the
EIP-55 form web3 requires): messages every node must reject; false_model (a valid advert claiming
gemma-3-270m at a high speed, whose exec handler then refuses the job:
gateways must back off from it; it announces the model on the DHT too).
Prints "READY <its peer id> <the peer id its adverts describe>" once connected,
and "EXEC" for every exec request it receives.  ``gated``: publish only after
a line arrives on stdin (so a test can tell which fake a node's count is about).
"""

import sys
import time

import trio
from nacl.signing import SigningKey

from inferad.hardware import probe
from inferad.models import CATALOG
from p2p import wire
from p2p.host import make_host, peer_info, running
from p2p.mesh import PROTOCOL_EXEC, TOPIC_ADVERTS, GossipSettings, running_mesh
from p2p.streams import FramedStream


def advert_body(peer_id: str, addrs: list[str], *, ts: int) -> dict:
    gemma = CATALOG["gemma-3-270m"]
    return wire.unparse(wire.Advert(
        peer_id=peer_id, addrs=tuple(addrs), eth="0x" + "11" * 20, engine="llama.cpp",
        models=(wire.ModelOffer(sha256=gemma.sha256, name=gemma.name, tokens_per_s=10_000.0, n_ctx=4096),),
        hardware=probe(), load=wire.Load(queued=0, running=0, capacity=9), version="0.1.0", seq=ts, ts=ts, interval=2))


OTHER_PEER = SigningKey(b"o" * 32)  # the peer whose adverts a "relayed" fake republishes


def described_peer(mode: str, peer_id: str) -> str:
    return wire.peer_id_from_public_key(bytes(OTHER_PEER.verify_key)) if mode == "relayed" else peer_id


def make_advert(mode: str, key: SigningKey, peer_id: str, addrs: list[str]) -> bytes:
    now = int(time.time() * 1000)
    body = advert_body(described_peer(mode, peer_id), addrs, ts=now)
    if mode == "bad_signature":
        return wire.sign_body("advert", body, SigningKey.generate())  # not the peer's key
    if mode == "relayed":
        return wire.sign_body("advert", body, OTHER_PEER)  # signed by the peer it describes, not by us
    if mode == "not_an_advert":
        return wire.sign(wire.EvidenceRequest(hash="ab" * 32), key)
    if mode == "stale":
        body.update(ts=now - 600_000, seq=now - 600_000)
    elif mode == "future":
        body.update(ts=now + 600_000, seq=now + 600_000)
    elif mode == "oversized":
        body["hardware"]["cpu"] = "x" * (GossipSettings.max_message_bytes + 1)
    elif mode == "wrong_schema":
        body["surprise"] = True
    elif mode == "unchecksummed_eth":
        body["eth"] = "0x" + "ab" * 20
    return wire.sign_body("advert", body, key)


async def refuse(stream) -> None:
    print("EXEC", flush=True)
    framed = FramedStream(stream)
    await framed.receive()
    await framed.send_error("unknown_model", "I do not actually serve that model")
    await framed.close()


async def provide(dht, sha256: str) -> None:
    while True:
        with trio.move_on_after(30):
            await dht.provide(wire.provider_key(sha256))
        await trio.sleep(3)


async def drain(subscription) -> None:
    while True:
        await subscription.get()


async def main(bootstrap: str, mode: str, seconds: float, gated: bool = False) -> None:
    from libp2p.custom_types import TProtocol

    key = SigningKey.generate()
    peer_id = wire.peer_id_from_public_key(bytes(key.verify_key))
    host = make_host(key)
    host.set_stream_handler(TProtocol(PROTOCOL_EXEC), refuse)
    import multiaddr

    async with running(host, [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), \
            running_mesh(host, GossipSettings()) as (pubsub, dht):
        await host.connect(peer_info(bootstrap))
        # A bad advert's sender stays unsubscribed: gossipsub then publishes to the topic's subscribers
        # it knows (fanout), so every message reaches the bootstrap node, whereas a subscriber publishes
        # to its mesh only, which a node crowded with peers may have pruned it from.  The false_model
        # peer subscribes like a real node, so its valid adverts travel the mesh like one's.
        if mode == "false_model":
            subscription = await pubsub.subscribe(TOPIC_ADVERTS)
        with trio.move_on_after(10):
            while not pubsub.peer_topics.get(TOPIC_ADVERTS):
                await trio.sleep(0.1)
        addrs = [str(a) for a in host.get_addrs()]
        print("READY", peer_id, described_peer(mode, peer_id), flush=True)
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                if mode == "false_model":
                    nursery.start_soon(drain, subscription)  # a full subscription queue stalls py-libp2p's reader
                if gated:
                    await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if mode == "false_model":  # the DHT too says it serves the model, as a real node's would
                    nursery.start_soon(provide, dht, CATALOG["gemma-3-270m"].sha256)
                while True:
                    await pubsub.publish(TOPIC_ADVERTS, make_advert(mode, key, peer_id, addrs))
                    await trio.sleep(1)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:] == ["gated"])
