"""The wire format as a contract: what docs/protocol.md promises a client in another language.

``spec_pack`` below is msgpack written from the spec's definition of canonical, not
from msgpack-python; the tests check that it and ``wire.canonical`` agree byte for
byte, that every other encoding of the same content (a wider header, keys in another
order, an integer where a float goes, nil, a default written out) is refused, and
that the decoder's checks run in the documented order.  No sockets.
"""

import dataclasses
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from p2p import wire
from tests.factories import make_job, make_result

KEY = SigningKey(bytes(range(32)))

# --------------------------------------------------------------------------- canonical msgpack, from the spec

# (one size up) header forms: fix -> 8 -> 16 -> 32 bit lengths
_STR = ((32, lambda n: bytes([0xA0 | n])), (1 << 8, lambda n: b"\xd9" + bytes([n])),
        (1 << 16, lambda n: b"\xda" + n.to_bytes(2, "big")), (1 << 32, lambda n: b"\xdb" + n.to_bytes(4, "big")))
_BIN = ((1 << 8, lambda n: b"\xc4" + bytes([n])), (1 << 16, lambda n: b"\xc5" + n.to_bytes(2, "big")),
        (1 << 32, lambda n: b"\xc6" + n.to_bytes(4, "big")))
_ARRAY = ((16, lambda n: bytes([0x90 | n])), (1 << 16, lambda n: b"\xdc" + n.to_bytes(2, "big")),
          (1 << 32, lambda n: b"\xdd" + n.to_bytes(4, "big")))
_MAP = ((16, lambda n: bytes([0x80 | n])), (1 << 16, lambda n: b"\xde" + n.to_bytes(2, "big")),
        (1 << 32, lambda n: b"\xdf" + n.to_bytes(4, "big")))
_UINT = ((128, lambda n: bytes([n])), (1 << 8, lambda n: b"\xcc" + bytes([n])),
         (1 << 16, lambda n: b"\xcd" + n.to_bytes(2, "big")), (1 << 32, lambda n: b"\xce" + n.to_bytes(4, "big")),
         (1 << 64, lambda n: b"\xcf" + n.to_bytes(8, "big")))
_NEG = ((-32, lambda n: n.to_bytes(1, "big", signed=True)),
        (-(1 << 7), lambda n: b"\xd0" + n.to_bytes(1, "big", signed=True)),
        (-(1 << 15), lambda n: b"\xd1" + n.to_bytes(2, "big", signed=True)),
        (-(1 << 31), lambda n: b"\xd2" + n.to_bytes(4, "big", signed=True)),
        (-(1 << 63), lambda n: b"\xd3" + n.to_bytes(8, "big", signed=True)))


def _header(forms, n: int, wide: bool) -> bytes:
    fits = [i for i, (bound, _) in enumerate(forms) if (n >= bound if bound < 0 else n < bound)]
    i = fits[0] + (1 if wide and fits[0] + 1 < len(forms) else 0)
    return forms[i][1](n)


def spec_pack(obj, wide=None, path=()) -> bytes:
    """Canonical msgpack as docs/protocol.md defines it; ``wide``: the path of one value to
    encode one header size too wide (every other value stays canonical)."""
    w = wide == path
    if obj is None:
        return b"\xc0"
    if type(obj) is bool:
        return b"\xc3" if obj else b"\xc2"
    if type(obj) is int:
        return _header(_UINT, obj, w) if obj >= 0 else _header(_NEG, obj, w)
    if type(obj) is float:
        return (b"\xca" + struct.pack(">f", obj)) if w else (b"\xcb" + struct.pack(">d", obj))
    if type(obj) is str:
        raw = obj.encode()
        return _header(_STR, len(raw), w) + raw
    if type(obj) is bytes:
        return _header(_BIN, len(obj), w) + obj
    if type(obj) is list:
        return _header(_ARRAY, len(obj), w) + b"".join(spec_pack(v, wide, (*path, i)) for i, v in enumerate(obj))
    if type(obj) is dict:
        keys = sorted(obj, key=lambda k: k.encode())  # by UTF-8 bytes
        return _header(_MAP, len(obj), w) + b"".join(spec_pack(k) + spec_pack(obj[k], wide, (*path, k)) for k in keys)
    raise TypeError(type(obj))


def paths(obj, path=()):
    """Every value's path in a decoded message (what ``spec_pack(wide=…)`` can widen)."""
    yield path
    if type(obj) is dict:
        for k, v in obj.items():
            yield from paths(v, (*path, k))
    elif type(obj) is list:
        for i, v in enumerate(obj):
            yield from paths(v, (*path, i))


def widenable(obj, path) -> bool:
    """Whether the value at ``path`` has a wider (or other) form than its canonical one."""
    for step in path:
        obj = obj[step]
    if type(obj) is int:
        return obj < 1 << 32 if obj >= 0 else obj >= -(1 << 31)
    return type(obj) in (str, bytes, list, dict, float)


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.binary(max_size=300),
    lambda children: st.lists(children, max_size=20) | st.dictionaries(st.text(max_size=8), children, max_size=20),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_the_spec_encoder_and_wire_canonical_agree_byte_for_byte(obj):
    assert spec_pack(obj) == wire.canonical(obj)


def signed_job_with_everything() -> bytes:
    job = make_job(prompt="x" * 40, temperature=0.5, top_p=0.75, top_k=40, seed=300, stop=("a", "b"))
    return wire.sign(dataclasses.replace(job, nonce=70000, max_price=3), KEY)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_header_wider_than_shortest_is_malformed(data):
    """str8 for a 3-char string, array16 for 2 items, map16 for 5 keys, uint16 for 1, float32 for 0.5…"""
    encoded = signed_job_with_everything()
    obj = msgpack.unpackb(encoded)
    assert spec_pack(obj) == encoded
    path = data.draw(st.sampled_from([p for p in paths(obj) if widenable(obj, p)]))
    widened = spec_pack(obj, wide=path)
    assert widened != encoded and msgpack.unpackb(widened) == obj  # same content, another encoding
    with pytest.raises(wire.MalformedMessage, match="canonical"):
        wire.decode(widened)


@pytest.mark.parametrize("canonical_part, other_part", [
    (b"\xa3job", b"\xd9\x03job"),  # str8 header for a 3-char string
    (b"\x92\xa1a\xa1b", b"\xdc\x00\x02\xa1a\xa1b"),  # array16 header for the 2 stop strings
    (b"\xa1v\x01", b"\xa1v\xcc\x01"),  # uint8 for 1
    (b"\xa1v\x01", b"\xa1v\xd0\x01"),  # int8 for a non-negative integer
    (b"\xcb\x3f\xe0\x00\x00\x00\x00\x00\x00", b"\xca\x3f\x00\x00\x00"),  # float32 for 0.5
])
def test_named_non_shortest_forms_are_malformed(canonical_part, other_part):
    encoded = signed_job_with_everything()
    assert encoded.count(canonical_part) == 1
    with pytest.raises(wire.MalformedMessage):
        wire.decode(encoded.replace(canonical_part, other_part))


def test_map16_for_the_envelope_is_malformed():
    encoded = signed_job_with_everything()
    assert encoded[0] == 0x85  # fixmap of 5: v, t, body, pk, sig
    with pytest.raises(wire.MalformedMessage):
        wire.decode(b"\xde\x00\x05" + encoded[1:])


# --------------------------------------------------------------------------- key order

ASTRAL, BMP_HIGH = "\U0001F600", "\uFFFD"  # UTF-8: EF BF BD < F0 9F 98 80; UTF-16: D83D < FFFD


def test_keys_sort_by_utf8_bytes_not_by_utf16_code_units():
    """JavaScript's default sort (UTF-16 code units) puts the astral key first: that order is malformed."""
    utf8_order = {"v": 1, "t": "token", "body": {BMP_HIGH: 1, ASTRAL: 2}}
    assert wire.canonical(utf8_order) == spec_pack(utf8_order)
    assert list(msgpack.unpackb(wire.canonical(utf8_order))["body"]) == [BMP_HIGH, ASTRAL]
    utf16_order = wire.canonical(utf8_order).replace(
        msgpack.packb(BMP_HIGH) + b"\x01" + msgpack.packb(ASTRAL) + b"\x02",
        msgpack.packb(ASTRAL) + b"\x02" + msgpack.packb(BMP_HIGH) + b"\x01")
    assert utf16_order != wire.canonical(utf8_order)
    with pytest.raises(wire.MalformedMessage, match="canonical"):
        wire.decode(utf16_order)
    with pytest.raises(wire.SchemaError, match="unknown field"):  # canonical, so it reaches the schema
        wire.decode(wire.canonical(utf8_order))


@given(st.dictionaries(st.text(max_size=6), st.integers(0, 9), max_size=12))
def test_canonical_key_order_is_utf8_byte_order(mapping):
    keys = list(msgpack.unpackb(wire.canonical(mapping), strict_map_key=False))
    assert keys == sorted(mapping, key=lambda k: k.encode())


# --------------------------------------------------------------------------- one encoding per value


def job_body(**changes) -> dict:
    body = wire.unparse(make_job())
    for dotted, value in changes.items():
        target, *rest = dotted.split("__")
        if rest:
            body[target][rest[0]] = value
        else:
            body[target] = value
    return body


@pytest.mark.parametrize("changes, match", [
    ({"params__temperature": 1}, "expected a float64, got int"),  # an integer where the schema says float
    ({"params__temperature": 0}, "expected a float64, got int"),
    ({"params__temperature": -0.0}, "-0.0"),
    ({"params__temperature": 0.0}, "default"),  # the default written out
    ({"params__top_p": 1.0}, "default"),
    ({"params__top_k": 0}, "default"),
    ({"params__seed": 0}, "default"),
    ({"params__stop": []}, "default"),
    ({"messages": None}, "nil"),  # nil for an absent optional field
    ({"prompt_tokens": None}, "nil"),
])
def test_a_job_has_one_encoding_and_every_other_is_a_schema_error(changes, match):
    body = job_body(**changes)
    with pytest.raises(wire.SchemaError, match=match):
        wire.parse(wire.JobRequest, body)
    with pytest.raises(wire.SchemaError):  # signed as it is: the signature verifies, the schema refuses
        wire.decode(wire.sign_body("job", body, KEY))


def test_results_and_adverts_also_leave_defaults_out():
    body = wire.unparse(make_result())
    assert "continued_from" not in body
    with pytest.raises(wire.SchemaError, match="default"):
        wire.parse(wire.JobResult, {**body, "continued_from": 0})
    with pytest.raises(wire.SchemaError, match="nil"):
        wire.parse(wire.VerifyMetrics, {"first_bad": None})


def test_python_senders_emit_the_one_encoding_however_the_dataclass_was_built():
    """``temperature=0`` or ``top_p=1`` (integers), ``-0.0``, ``stop=[]``: the same bytes and job id as the defaults."""
    plain = make_job()
    odd = dataclasses.replace(plain, params=dataclasses.replace(plain.params, temperature=-0.0, top_p=1, top_k=0,
                                                                stop=[]))
    assert wire.sign(odd, KEY) == wire.sign(plain, KEY)
    assert wire.unparse(plain)["params"] == {"max_tokens": 8}
    warm = dataclasses.replace(plain, params=dataclasses.replace(plain.params, temperature=1))
    assert wire.unparse(warm)["params"]["temperature"] == 1.0
    assert type(wire.unparse(warm)["params"]["temperature"]) is float
    assert wire.decode(wire.sign(warm, KEY)).message.params.temperature == 1.0


sampling = st.builds(
    wire.SamplingParams, max_tokens=st.integers(1, wire.MAX_TOKENS_LIMIT),
    temperature=st.integers(0, 2) | st.floats(0.0, 2.0), top_p=st.integers(0, 1) | st.floats(0.0, 1.0),
    top_k=st.integers(0, 1000), seed=st.integers(0, 2**32 - 1),
    stop=st.lists(st.text(min_size=1, max_size=64), max_size=8).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(sampling)
def test_a_body_is_accepted_exactly_when_it_is_canonical_of_its_parse(params):
    job = dataclasses.replace(make_job(), params=params)
    env = wire.decode(wire.sign(job, KEY))
    assert wire.canonical(wire.unparse(wire.parse(wire.JobRequest, env.body))) == wire.canonical(env.body)
    assert env.message.params == dataclasses.replace(
        params, temperature=float(params.temperature) + 0.0, top_p=float(params.top_p) + 0.0)


def test_limits_ride_in_adverts_and_an_advert_without_them_still_decodes():
    limits = wire.Limits(max_tokens=1024, max_ttl_s=600, clock_skew_s=60, max_frame=1 << 20)
    advert = wire.Advert(
        peer_id=wire.peer_id_from_public_key(bytes(KEY.verify_key)), addrs=("/ip4/127.0.0.1/tcp/1",),
        eth="0x" + "11" * 20, engine="sim", models=(), hardware=wire.Hardware(cpu="x", cores=1, ram_mb=1),
        load=wire.Load(queued=0, running=0, capacity=1), version="t", seq=1, ts=1, interval=2, limits=limits)
    assert wire.decode(wire.sign(advert, KEY)).message.limits == limits
    older = dataclasses.replace(advert, limits=None)
    assert "limits" not in wire.unparse(older)
    assert wire.decode(wire.sign(older, KEY)).message.limits is None


# --------------------------------------------------------------------------- the order of checks


def test_a_signed_type_without_pk_or_sig_is_bad_signature_not_malformed():
    for missing in (("sig",), ("pk",), ("pk", "sig")):
        obj = msgpack.unpackb(wire.sign(make_job(), KEY))
        for key in missing:
            del obj[key]
        with pytest.raises(wire.BadSignature) as info:
            wire.decode(wire.canonical(obj))
        assert info.value.code == "bad_signature"


def test_an_envelope_without_body_or_with_an_extra_key_is_malformed():
    obj = msgpack.unpackb(wire.sign(make_job(), KEY))
    for broken in ({k: v for k, v in obj.items() if k != "body"}, {**obj, "x": 1}):
        with pytest.raises(wire.MalformedMessage):
            wire.decode(wire.canonical(broken))


def test_a_job_body_sent_as_another_type_is_a_schema_error():
    """The body is checked against the type it claims, so the caller's `unexpected` never sees it."""
    body = wire.unparse(make_job())
    for other in ("result", "advert", "exec"):
        with pytest.raises(wire.SchemaError) as info:
            wire.decode(wire.sign_body(other, body, KEY))
        assert info.value.code == "schema"


def test_the_signature_is_checked_before_the_schema_and_canonical_form_before_both():
    bad_body = job_body(nonce=-5)
    data = wire.sign_body("job", bad_body, KEY)
    obj = msgpack.unpackb(data)
    obj["sig"] = bytes(64)
    with pytest.raises(wire.BadSignature):  # a schema error too, but the signature comes first
        wire.decode(wire.canonical(obj))
    with pytest.raises(wire.MalformedMessage):  # and non-canonical bytes before the signature
        wire.decode(b"\xde\x00\x05" + wire.canonical(obj)[1:])


# --------------------------------------------------------------------------- what a client checks on a result


def test_a_client_checks_the_signer_the_model_sha256_and_the_signing_time_of_a_result():
    from inferad.client import Answer, BadResponse

    worker = SigningKey(b"w" * 32)
    job = make_job()
    job_id = wire.decode(wire.sign(job, KEY)).digest
    honest = dataclasses.replace(make_result(job_id=job_id, tokens=()), text="",
                                 usage=wire.Usage(prompt_tokens=2, completion_tokens=0),
                                 worker=wire.peer_id_from_public_key(bytes(worker.verify_key)),
                                 model=wire.ModelRef(sha256=job.model.sha256, name="the worker's own label"))

    def answer(result, key=worker):
        return Answer(job_id, wire.DEFAULT_MAX_FRAME, job=job).feed(wire.sign(result, key))

    assert answer(honest).result == honest  # a label other than the job's is fine: the sha256 names the model
    for bad, why in ((dataclasses.replace(honest, model=wire.ModelRef(sha256="11" * 32, name=job.model.name)),
                      "for model"),
                     (dataclasses.replace(honest, signed_at=job.expires_at), "after the job expired"),
                     (dataclasses.replace(honest, job_id="22" * 32), "for job")):
        with pytest.raises(BadResponse, match=why):
            answer(bad)
    with pytest.raises(BadResponse, match="signed by"):  # peer id from the signer's key, not the claim
        answer(honest, key=SigningKey(b"x" * 32))


def test_json_views_show_every_field_though_the_signed_body_leaves_defaults_out():
    result = make_result()
    assert "continued_from" not in wire.unparse(result)
    assert wire.view(result)["continued_from"] == 0
