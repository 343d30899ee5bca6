"""Bad input against a running node: each gets its typed error, and the node serves on."""

import msgpack
import pytest
import trio
from nacl.signing import SigningKey

from inferad.client import NodeClient
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT, make_host, peer_info, running
from p2p.mesh import PROTOCOL_SETTLEMENT, PROTOCOL_VERIFY
from p2p.streams import FramedStream, StreamClosed
from tests.conftest import run_cli
from tests.factories import make_job, make_result

pytestmark = [pytest.mark.integration, pytest.mark.model]

CLIENT = SigningKey(b"c" * 32)


async def exchange(addr: str, raw: bytes, protocol: str = PROTOCOL_SUBMIT) -> list:
    """Write raw bytes on a fresh stream of ``protocol``; return the decoded frames received."""
    from libp2p.custom_types import TProtocol

    peer = peer_info(addr)
    async with running(make_host(SigningKey.generate()), []) as host:
        await host.connect(peer)
        stream = await host.new_stream(peer.peer_id, [TProtocol(protocol)])
        framed = FramedStream(stream)
        await stream.write(raw)
        frames = []
        with trio.fail_after(30):
            while True:
                try:
                    frames.append(wire.decode(await framed.receive()))
                except StreamClosed:
                    return frames


def error_code(addr: str, raw: bytes, protocol: str = PROTOCOL_SUBMIT) -> str:
    frames = trio.run(exchange, addr, raw, protocol)
    assert frames and frames[-1].type == "error", frames
    return frames[-1].message.code


def signed(job, key=CLIENT) -> bytes:
    return wire.encode_frame(wire.sign(job, key))


def served_model(node) -> wire.ModelRef:
    model = node.info["models"][0]
    return wire.ModelRef(sha256=model["sha256"], name=model["name"])


def resign(job_bytes: bytes, mutate) -> bytes:
    """Change a signed envelope's body and keep the old signature."""
    envelope = msgpack.unpackb(job_bytes)
    mutate(envelope)
    return wire.encode_frame(wire.canonical(envelope))


def job_body(node, **changes) -> dict:
    body = wire.unparse(make_job(model=served_model(node)))
    body.update(changes)
    return body


CASES = {
    "random_bytes": (lambda node: wire.encode_frame(bytes(range(256)) * 3), "malformed"),
    "oversized_length_prefix": (lambda node: b"\xff\xff\xff\xff\x0f", "frame_too_large"),
    "signed_job_with_unknown_field": (
        lambda node: wire.encode_frame(wire.sign_body("job", job_body(node, surprise=1), CLIENT)), "schema"),
    "signed_job_with_out_of_range_field": (
        lambda node: wire.encode_frame(wire.sign_body("job", job_body(node, nonce=-5), CLIENT)), "schema"),
    "bad_signature": (lambda node: resign(wire.sign(make_job(model=served_model(node)), CLIENT),
                                          lambda e: e.update(sig=bytes(64))), "bad_signature"),
    "tampered_body": (lambda node: resign(wire.sign(make_job(model=served_model(node)), CLIENT),
                                          lambda e: e["body"].update(nonce=1)), "bad_signature"),
    "expired": (lambda node: signed(make_job(model=served_model(node), ttl_s=5, age_s=10)), "expired"),
    "unknown_model": (lambda node: signed(make_job(model=wire.ModelRef(sha256="11" * 32, name="other"))),
                      "unknown_model"),
    "max_tokens_over_limit": (lambda node: signed(make_job(model=served_model(node), max_tokens=65)),
                              "max_tokens"),
    "prompt_longer_than_context": (lambda node: signed(make_job("word " * 600, model=served_model(node))),
                                   "context_overflow"),
    "result_instead_of_job": (lambda node: wire.encode_frame(wire.sign(make_result(), CLIENT)), "unexpected"),
    # docs/protocol.md, "The order of checks" and "One encoding per value"
    "signed_job_without_sig": (lambda node: resign(wire.sign(make_job(model=served_model(node)), CLIENT),
                                                   lambda e: e.pop("sig")), "bad_signature"),
    "job_body_sent_as_a_result": (
        lambda node: wire.encode_frame(wire.sign_body("result", job_body(node), CLIENT)), "schema"),
    "integer_temperature": (lambda node: wire.encode_frame(wire.sign_body(
        "job", job_body(node, params={"max_tokens": 2, "temperature": 1}), CLIENT)), "schema"),
    "default_written_out": (lambda node: wire.encode_frame(wire.sign_body(
        "job", job_body(node, params={"max_tokens": 2, "top_p": 1.0}), CLIENT)), "schema"),
}


def verify_request(node) -> bytes:
    job = wire.sign(make_job(model=served_model(node)), CLIENT)
    result = wire.sign(make_result(wire.decode(job).digest), CLIENT)
    return wire.encode_frame(wire.sign(wire.VerifyRequest(job=job, result=result, beacon_block=1, beacon=b"\1" * 32),
                                       CLIENT))


OTHER_PROTOCOLS = {
    "verify_random_bytes": (PROTOCOL_VERIFY, lambda node: wire.encode_frame(b"\x93" * 50), "malformed"),
    "verify_oversized": (PROTOCOL_VERIFY, lambda node: b"\xff\xff\xff\xff\x0f", "frame_too_large"),
    "verify_job_instead_of_request": (PROTOCOL_VERIFY, lambda node: signed(make_job(model=served_model(node))),
                                      "unexpected"),
    "verify_without_a_chain": (PROTOCOL_VERIFY, verify_request, "no_chain"),
    "evidence_nobody_holds": (PROTOCOL_SETTLEMENT, lambda node: wire.encode_frame(
        wire.sign(wire.EvidenceRequest(hash="ab" * 32), CLIENT)), "no_evidence"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_typed_error_and_node_serves_next_job(node, case):
    build, expected = CASES[case]
    assert error_code(node.addr, build(node)) == expected
    assert good_job_is_served(node)


@pytest.mark.parametrize("case", list(OTHER_PROTOCOLS))
def test_bad_verify_and_evidence_requests_get_typed_errors_and_node_serves_on(node, case):
    protocol, build, expected = OTHER_PROTOCOLS[case]
    assert error_code(node.addr, build(node), protocol) == expected
    assert good_job_is_served(node)


def good_job_is_served(node) -> bool:
    async def run():
        async with NodeClient.connect(node.addr, CLIENT) as client:
            return await client.submit(make_job(model=served_model(node), max_tokens=2))

    return trio.run(run).result.usage.completion_tokens >= 1


def test_replayed_job_is_rejected(node):
    frame = signed(make_job(model=served_model(node), max_tokens=2))
    first = trio.run(exchange, node.addr, frame)
    assert first[-1].type == "result"
    assert error_code(node.addr, frame) == "replay"


def test_silent_client_times_out_and_node_serves_on(start_node, tmp_path):
    home = tmp_path / "slow"
    run_cli("init", home=home, check=True)
    config = home / "config.toml"
    config.write_text(config.read_text().replace("request_timeout = 10", "request_timeout = 1"))
    n = start_node("slow", "--max-tokens", "8", "--n-ctx", "256")
    assert error_code(n.addr, b"\x05ab") == "timeout"  # promises 5 bytes, sends 2, then waits
    assert good_job_is_served(n)
