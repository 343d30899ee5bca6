"""Fuzz every stream protocol and HTTP endpoint of a running node (part of the reliability suite).

Bounded hypothesis runs (``INFERAD_FUZZ_EXAMPLES`` per target, 15 by default;
``make reliability`` runs 40): malformed and random frames, oversized
length prefixes, half-closed streams, slow-loris writers, random JSON.  After
each target the node must still serve a good job, and its memory must not
have grown beyond a bound.
"""

import json
import os
import socket
import time

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from inferad.client import NodeClient
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT, make_host, peer_info, running
from p2p.mesh import PROTOCOL_EXEC, PROTOCOL_SETTLEMENT, PROTOCOL_VERIFY
from tests.conftest import NodeProcess, run_cli
from tests.factories import make_job

pytestmark = [pytest.mark.integration, pytest.mark.model]
EXAMPLES = int(os.environ.get("INFERAD_FUZZ_EXAMPLES", "15"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROTOCOLS = (PROTOCOL_SUBMIT, PROTOCOL_EXEC, PROTOCOL_SETTLEMENT, PROTOCOL_VERIFY)
RSS_GROWTH_LIMIT_MB = 96
CLIENT = SigningKey(b"f" * 32)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz") / "node"
    run_cli("init", home=home, check=True)
    key = run_cli("apikey", "create", home=home, check=True).stdout.strip()
    node = NodeProcess(home, "--max-tokens", "16", "--n-ctx", "256", "--api-port", "0")
    yield node, key
    assert node.stop() == 0, node.log()


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def serves_a_good_job(node) -> bool:
    model = node.info["models"][0]

    async def run():
        async with NodeClient.connect(node.addr, CLIENT) as client:
            return await client.submit(make_job(model=wire.ModelRef(sha256=model["sha256"], name=model["name"]),
                                                max_tokens=2))

    return trio.run(run).result.usage.completion_tokens >= 1


async def throw(addr: str, protocol: str, payloads: list[tuple[bytes, str]]) -> None:
    """Send each payload on a fresh stream, then reset it at once, or half-close it and
    read until the node answers (an error frame, a reset or a close), which must be prompt."""
    from libp2p.custom_types import TProtocol

    peer = peer_info(addr)
    async with running(make_host(SigningKey.generate()), []) as host:
        await host.connect(peer)
        for payload, ending in payloads:
            stream = await host.new_stream(peer.peer_id, [TProtocol(protocol)])
            with trio.fail_after(5):
                try:
                    await stream.write(payload)
                    if ending == "reset":
                        await stream.reset()
                        continue
                    await stream.close()  # half-close: the node sees the end of the request
                    while await stream.read(65536):
                        pass
                except trio.TooSlowError:
                    raise
                except Exception:  # reset by the node: an answer too
                    pass
        await host.disconnect(peer.peer_id)


frames = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=512).map(wire.encode_frame),
    st.dictionaries(st.sampled_from(["v", "t", "body", "pk", "sig", "x"]),
                    st.one_of(st.integers(-5, 2**70), st.text(max_size=20), st.binary(max_size=70), st.none(),
                              st.lists(st.integers(), max_size=4)), max_size=6)
    .map(lambda m: wire.encode_frame(__import__("msgpack").packb(m, use_bin_type=True))),
    st.just(b"\xff\xff\xff\xff\xff\xff\xff\xff\x0f"),  # a length prefix far over the limit
)
payloads = st.lists(st.tuples(frames, st.sampled_from(["half_close", "reset"])), min_size=1, max_size=4)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_random_frames_on_every_stream_protocol_leave_the_node_serving(target, protocol):
    node, _ = target
    before = rss_mb(node.proc.pid)

    @FUZZ
    @given(payloads)
    def fuzz(batch):
        trio.run(throw, node.addr, protocol, batch)

    fuzz()
    assert serves_a_good_job(node)
    assert rss_mb(node.proc.pid) - before < RSS_GROWTH_LIMIT_MB


def test_a_slow_loris_stream_is_cut_off_and_others_are_served_meanwhile(target):
    from libp2p.custom_types import TProtocol

    node, _ = target

    async def slow_and_good():
        peer = peer_info(node.addr)
        async with running(make_host(SigningKey.generate()), []) as host:
            await host.connect(peer)
            stream = await host.new_stream(peer.peer_id, [TProtocol(PROTOCOL_SUBMIT)])
            started = time.monotonic()
            frame = wire.encode_frame(wire.sign(make_job(), CLIENT))
            for byte in frame[:25]:  # one byte per second: never a whole request in time
                try:
                    await stream.write(bytes([byte]))
                    with trio.move_on_after(1):
                        await stream.read(65536)  # the node's timeout error, its close or its reset
                        return time.monotonic() - started
                except Exception:
                    return time.monotonic() - started
            return None

    elapsed = trio.run(slow_and_good)
    assert elapsed is not None and elapsed < 20  # the node gave up on it after request_timeout
    assert serves_a_good_job(node)


http_bodies = st.one_of(
    st.binary(max_size=1024),
    st.dictionaries(st.sampled_from(["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "stream",
                                     "stop", "seed", "stream_options", "n"]),
                    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                                           st.floats(allow_nan=False), st.text(max_size=30)),
                                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                            inner, max_size=3),
                                 max_leaves=8), max_size=6).map(lambda d: json.dumps(d).encode()),
)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/jobs/xyz",
                                  "/metrics", "/health", "/nope"])
def test_random_http_requests_get_openai_shaped_errors_never_a_crash(target, path):
    node, key = target
    url = node.info["api"] + path
    before = rss_mb(node.proc.pid)
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:

        @FUZZ
        @given(http_bodies, st.sampled_from(["POST", "GET", "PUT"]))
        def fuzz(body, method):
            reply = http.request(method, url, content=body)
            assert reply.status_code < 500, reply.text
            if reply.status_code >= 400:
                assert set(reply.json()["error"]) >= {"message", "type", "code"}

        fuzz()
        too_big = http.post(node.info["api"] + "/v1/completions", content=b"x" * (2 << 20))
        assert too_big.status_code == 413
    assert serves_a_good_job(node)
    assert rss_mb(node.proc.pid) - before < RSS_GROWTH_LIMIT_MB


def test_a_slow_loris_http_client_does_not_block_others(target):
    node, key = target
    host, port = node.info["api"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        reply = httpx.get(node.info["api"] + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert reply.status_code == 200


@pytest.mark.long
def test_a_node_accepts_more_connections_in_its_life_than_py_libp2ps_inbound_cap(target):
    """py-libp2p 0.8.1 held an inbound slot until its swarm stopped: 250 connections, then none."""
    node, _ = target

    async def connect_many(n: int) -> None:
        peer = peer_info(node.addr)
        for _ in range(n):
            async with running(make_host(SigningKey.generate()), []) as host:
                with trio.fail_after(10):
                    await host.connect(peer)
                await host.disconnect(peer.peer_id)

    trio.run(connect_many, 260)
    assert serves_a_good_job(node)
