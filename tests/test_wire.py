"""The wire format: signed envelopes, schemas and framing, without sockets."""

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2p import wire
from tests.factories import make_job, make_result

KEY = SigningKey(bytes(range(32)))


def test_signed_job_round_trips():
    job = make_job(prompt="The capital of France is")
    env = wire.decode(wire.sign(job, KEY))
    assert env.type == "job"
    assert env.message == job
    assert env.signer == bytes(KEY.verify_key)


def test_job_id_is_sha256_of_canonical_body():
    import hashlib

    job = make_job()
    env = wire.decode(wire.sign(job, KEY))
    assert env.digest == hashlib.sha256(wire.canonical(env.body)).hexdigest()
    # The id names the request, whoever signed it; any change of the body changes it.
    assert wire.decode(wire.sign(job, SigningKey.generate())).digest == env.digest
    assert wire.decode(wire.sign(dataclasses.replace(job, nonce=job.nonce + 1), KEY)).digest != env.digest


def test_peer_id_matches_libp2p_derivation():
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.peer.id import ID

    libp2p_key = Ed25519PrivateKey.from_bytes(bytes(KEY))
    expected = ID.from_pubkey(libp2p_key.get_public_key()).to_base58()
    assert wire.peer_id_from_public_key(bytes(KEY.verify_key)) == expected
    assert expected.startswith("12D3KooW")
    assert wire.public_key_from_peer_id(expected) == bytes(KEY.verify_key)


def test_result_with_wrong_usage_count_is_a_schema_error():
    result = make_result()
    body = wire.unparse(result)
    body["usage"]["completion_tokens"] += 1
    with pytest.raises(wire.SchemaError, match="completion_tokens"):
        wire.parse(wire.JobResult, body)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b.update(extra=1), "unknown field"),
        (lambda b: b.pop("nonce"), "missing field nonce"),
        (lambda b: b["params"].update(max_tokens=0), "max_tokens"),
        (lambda b: b["params"].update(temperature=float("nan")), "temperature"),
        (lambda b: b["params"].update(max_tokens=True), "expected an integer"),
        (lambda b: b.update(client_eth="0x12"), "Ethereum address"),
        (lambda b: b["model"].update(sha256="ABC"), "sha256"),
        (lambda b: b.update(messages=[{"role": "user", "content": "hi"}]), "exactly one of"),
        (lambda b: b.update(expires_at=b["created_at"]), "expires_at"),
    ],
)
def test_job_schema_rejects_bad_fields(mutate, match):
    body = wire.unparse(make_job())
    mutate(body)
    with pytest.raises(wire.SchemaError, match=match):
        wire.parse(wire.JobRequest, body)


def test_signature_over_other_type_does_not_verify():
    """The domain prefix binds a signature to its message type."""
    data = wire.sign(make_job(), KEY)
    obj = msgpack.unpackb(data)
    obj["t"] = "result"
    with pytest.raises(wire.WireError):
        wire.decode(wire.canonical(obj))


def test_unsigned_types_cannot_carry_signatures_and_vice_versa():
    with pytest.raises(TypeError):
        wire.encode_unsigned(make_job())
    with pytest.raises(TypeError):
        wire.sign(wire.Token(index=0, id=1, text="a"), KEY)
    obj = msgpack.unpackb(wire.sign(make_job(), KEY))
    del obj["sig"]
    with pytest.raises(wire.BadSignature):  # a signed type without its signature: bad_signature
        wire.decode(wire.canonical(obj))
    token = msgpack.unpackb(wire.encode_unsigned(wire.Token(index=0, id=1, text="a")))
    token.update(pk=bytes(32), sig=bytes(64))
    with pytest.raises(wire.MalformedMessage):
        wire.decode(wire.canonical(token))


def test_non_canonical_encoding_is_rejected():
    obj = msgpack.unpackb(wire.sign(make_job(), KEY))
    unsorted = msgpack.packb(dict(reversed(list(obj.items()))), use_bin_type=True)
    with pytest.raises(wire.MalformedMessage, match="canonical"):
        wire.decode(unsorted)


def test_oversized_message_is_rejected_before_decoding():
    with pytest.raises(wire.FrameTooLarge):
        wire.decode(b"\x00" * 2048, max_size=1024)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_of_a_signed_envelope_fails(data):
    encoded = wire.sign(make_job(prompt="hello world"), KEY)
    pos = data.draw(st.integers(0, len(encoded) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != encoded[pos]))
    tampered = encoded[:pos] + bytes([new]) + encoded[pos + 1:]
    with pytest.raises(wire.WireError):
        wire.decode(tampered)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_wire_errors(blob):
    try:
        wire.decode(blob)
    except wire.WireError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["job", "result", "token", "error", "advert", 7]), json_values)
def test_arbitrary_well_formed_msgpack_only_raises_wire_errors(msg_type, body):
    for envelope in ({"v": 1, "t": msg_type, "body": body},
                     {"v": 1, "t": msg_type, "body": body, "pk": b"\0" * 32, "sig": b"\0" * 64}):
        try:
            wire.decode(wire.canonical(envelope))
        except wire.WireError:
            pass


@given(st.lists(st.binary(max_size=3000), max_size=8), st.integers(1, 64))
def test_frames_round_trip_whatever_the_chunking(payloads, chunk):
    stream = b"".join(wire.encode_frame(p) for p in payloads)
    decoder = wire.FrameDecoder(max_frame=4096)
    out = []
    for i in range(0, len(stream), chunk):
        decoder.feed(stream[i:i + chunk])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    assert out == payloads
    assert decoder.buffered == 0


def test_oversized_length_prefix_is_rejected_before_the_payload_arrives():
    decoder = wire.FrameDecoder(max_frame=1 << 20)
    decoder.feed(bytes([0x80, 0x80, 0x80, 0x01]))  # a length of 2**21
    with pytest.raises(wire.FrameTooLarge):
        decoder.next_frame()


def test_endless_varint_is_rejected():
    decoder = wire.FrameDecoder(max_frame=1 << 20)
    decoder.feed(b"\xff" * 4)
    with pytest.raises(wire.FrameTooLarge):
        decoder.next_frame()
