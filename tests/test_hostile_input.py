"""Inputs replayed from other inference servers' bug reports, against a devnet node with a chain.

A node with a chain has imported the Ethereum stack, whose py_ecc once raised Python's recursion
limit to 100,000: a 100,000-deep JSON body then crashed node1 with a segmentation fault.  Every
deep input below gets its 4xx or typed error frame, and the node serves the next job.
"""

import httpx
import pytest
import trio
from nacl.signing import SigningKey

from chain.devnet import ANVIL
from inferad.transfer import PROTOCOL_MODEL
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT, make_host, peer_info, running
from p2p.mesh import PROTOCOL_EXEC, PROTOCOL_SETTLEMENT, PROTOCOL_VERIFY, TOPIC_ADVERTS, TOPIC_ATTESTATIONS
from tests.test_bad_input import exchange

pytestmark = [pytest.mark.integration, pytest.mark.model,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]

DEPTH = 100_000
DEEP_JSON = {
    "arrays": b"[" * DEPTH + b"]" * DEPTH,
    "objects": b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
    "inside_a_field": b'{"model":"gemma-3-270m","prompt":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
}
DEEP_MSGPACK = {
    "arrays": b"\x91" * DEPTH + b"\xc0",  # fixarray of one element, 100,000 times
    "maps": b"\x81\xa1k" * DEPTH + b"\xc0",  # {"k": {"k": ...}}
}
STREAM_PROTOCOLS = (PROTOCOL_SUBMIT, PROTOCOL_EXEC, PROTOCOL_SETTLEMENT, PROTOCOL_VERIFY, PROTOCOL_MODEL)


def post(devnet, path: str, body: bytes | dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {devnet['api_key']}"}
    if isinstance(body, bytes):
        return httpx.post(devnet["api"] + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=120)
    return httpx.post(devnet["api"] + path, json=body, headers=headers, timeout=120)


def serves_a_job(devnet) -> bool:
    reply = post(devnet, "/completions", {"model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 2})
    return reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("path", ["/chat/completions", "/completions"])
@pytest.mark.parametrize("shape", list(DEEP_JSON))
def test_deeply_nested_json_is_a_400_and_the_node_serves_on(devnet, path, shape):
    reply = post(devnet, path, DEEP_JSON[shape])
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error" and "param" in error
    assert serves_a_job(devnet)


@pytest.mark.parametrize("protocol", STREAM_PROTOCOLS)
@pytest.mark.parametrize("shape", list(DEEP_MSGPACK))
def test_deeply_nested_msgpack_gets_an_error_frame_on_every_protocol(devnet, protocol, shape):
    node1 = devnet["nodes"][0]["addr"]
    frames = trio.run(exchange, node1, wire.encode_frame(DEEP_MSGPACK[shape]), protocol)
    assert [f.type for f in frames] == ["error"] and frames[0].message.code == "malformed"
    assert serves_a_job(devnet)


async def gossip(addr: str, topic: str, data: bytes) -> None:
    """Join the mesh through ``addr`` as a fresh peer and publish ``data`` on ``topic``."""
    from p2p.mesh import GossipSettings, running_mesh

    host = make_host(SigningKey.generate())
    async with running(host, []), running_mesh(host, GossipSettings()) as (pubsub, _):
        await host.connect(peer_info(addr))
        with trio.move_on_after(10):  # not subscribed: published to the topic's known subscribers (fanout)
            while not pubsub.peer_topics.get(topic):
                await trio.sleep(0.1)
        await pubsub.publish(topic, data)
        await trio.sleep(1)


@pytest.mark.parametrize("topic", [TOPIC_ADVERTS, TOPIC_ATTESTATIONS])
def test_deeply_nested_gossip_is_rejected_and_the_node_serves_on(devnet, topic):
    node1 = devnet["nodes"][0]
    trio.run(gossip, node1["addr"], topic, DEEP_MSGPACK["arrays"])
    assert serves_a_job(devnet)
    health = httpx.get(devnet["api"].removesuffix("/v1") + "/health", timeout=10).json()
    assert health["status"] == "ok"


# Protobuf groups nest without limit in the encoding: field 15, wire type 3 (start) ... 4 (end).
DEEP_PROTOBUF = b"\x7b" * DEPTH + b"\x7c" * DEPTH


async def send_raw(addr: str, protocol: str, raw: bytes) -> None:
    """Write raw bytes on a fresh stream of ``protocol``; read until the node closes it (or 10 s)."""
    from libp2p.custom_types import TProtocol

    peer = peer_info(addr)
    async with running(make_host(SigningKey.generate()), []) as host:
        await host.connect(peer)
        stream = await host.new_stream(peer.peer_id, [TProtocol(protocol)])
        await stream.write(raw)
        with trio.move_on_after(10):
            try:
                while await stream.read(65536):
                    pass
            except Exception:  # noqa: BLE001  a reset (or any end of the stream) is the node's answer
                pass


@pytest.mark.parametrize("protocol", ["/ipfs/kad/1.0.0", "/meshsub/1.1.0", "/libp2p/autonat/1.0.0",
                                      "/libp2p/circuit/relay/0.2.0/hop", "/libp2p/circuit/relay/0.2.0/stop",
                                      "/libp2p/dcutr"])
def test_deeply_nested_protobuf_to_the_dht_pubsub_autonat_and_relay_leaves_the_node_serving(devnet, protocol):
    node1 = devnet["nodes"][0]["addr"]
    trio.run(send_raw, node1, protocol, wire.encode_frame(DEEP_PROTOBUF))  # both use varint length prefixes
    assert serves_a_job(devnet)
