"""A tiny declarative schema language for wire bodies.

Every field of every message says its type and bounds next to its name, so a
reader sees the whole contract of a message in one place and the decoder can
reject anything else before the rest of the node touches it.  Messages are
frozen dataclasses whose fields carry a *check*: a function ``(value, path) ->
value`` that returns the validated value (lists become tuples) or raises
:class:`SchemaError`.

Every value has exactly one wire form, so a message has one encoding and one
id: a float field holds a float64 (never an integer), a field with nothing to
say is absent (never nil), and a field equal to its default is absent too.
:func:`parse` refuses anything else and :func:`unparse` writes only that form.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

Check = Callable[[Any, str], Any]
M = TypeVar("M")


class WireError(Exception):
    """Base of every error the wire layer raises for bad input.

    ``code`` is the machine-readable code sent back in an ``error`` frame.
    """

    code = "malformed"


class SchemaError(WireError):
    code = "schema"


def field(check: Check, default: Any = dataclasses.MISSING) -> Any:
    """Declare a message field with its check (and a default if optional)."""
    return dataclasses.field(default=default, metadata={"check": check})


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, path: str) -> int:
        if type(value) is not int:
            raise SchemaError(f"{path}: expected an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise SchemaError(f"{path}: {value} is outside [{lo}, {hi}]")
        return value

    return check


def number(lo: float, hi: float) -> Check:
    """A finite float64.  An integer is refused (``0``, not ``0.0``), and so is ``-0.0``:
    each value has one encoding.  Senders need not care: :func:`unparse` writes every
    number field as a float64 whatever the dataclass holds."""

    def check(value: Any, path: str) -> float:
        if type(value) is not float:
            hint = f" (write {value}.0)" if type(value) is int else ""
            raise SchemaError(f"{path}: expected a float64, got {type(value).__name__}{hint}")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise SchemaError(f"{path}: {value} is outside [{lo}, {hi}]")
        if value == 0.0 and math.copysign(1.0, value) < 0:
            raise SchemaError(f"{path}: -0.0 is not allowed (write 0.0)")
        return value

    check.encode = _float64  # type: ignore[attr-defined]
    return check


def _float64(value: Any) -> float:
    return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0


def text(max_len: int, min_len: int = 0) -> Check:
    def check(value: Any, path: str) -> str:
        if type(value) is not str:
            raise SchemaError(f"{path}: expected a string, got {type(value).__name__}")
        if not min_len <= len(value) <= max_len:
            raise SchemaError(f"{path}: length {len(value)} is outside [{min_len}, {max_len}]")
        return value

    return check


def matching(pattern: str, what: str) -> Check:
    regex = re.compile(pattern)

    def check(value: Any, path: str) -> str:
        if type(value) is not str or not regex.fullmatch(value):
            raise SchemaError(f"{path}: expected {what}")
        return value

    return check


def blob(max_len: int) -> Check:
    def check(value: Any, path: str) -> bytes:
        if type(value) is not bytes or len(value) > max_len:
            raise SchemaError(f"{path}: expected at most {max_len} bytes")
        return value

    return check


def binary(length: int) -> Check:
    def check(value: Any, path: str) -> bytes:
        if type(value) is not bytes or len(value) != length:
            raise SchemaError(f"{path}: expected {length} bytes")
        return value

    return check


def choice(*options: str) -> Check:
    def check(value: Any, path: str) -> str:
        if type(value) is not str or value not in options:
            raise SchemaError(f"{path}: expected one of {', '.join(options)}")
        return value

    return check


def sequence(item: Check, max_len: int) -> Check:
    def check(value: Any, path: str) -> tuple:
        if type(value) is not list:
            raise SchemaError(f"{path}: expected a list, got {type(value).__name__}")
        if len(value) > max_len:
            raise SchemaError(f"{path}: {len(value)} items, at most {max_len} allowed")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return check


def optional(inner: Check) -> Check:
    """A field that may be absent.  Absent is the only way to say "none": nil is refused,
    so a message without the field has one encoding, not two."""

    def check(value: Any, path: str) -> Any:
        if value is None:
            raise SchemaError(f"{path}: nil is not allowed; leave the field out")
        return inner(value, path)

    if hasattr(inner, "encode"):
        check.encode = inner.encode  # type: ignore[attr-defined]
    return check


def nested(cls: type[M]) -> Check:
    def check(value: Any, path: str) -> M:
        return parse(cls, value, path)

    return check


HEX_DIGEST = matching(r"[0-9a-f]{64}", "64 lowercase hex digits (a sha256)")
ETH_ADDRESS = matching(r"0x[0-9a-fA-F]{40}", "an Ethereum address (0x + 40 hex digits)")
PEER_ID = matching(r"[1-9A-HJ-NP-Za-km-z]{32,128}", "a base58 libp2p peer id")
UINT64 = integer(0, 2**64 - 1)


def parse(cls: type[M], value: Any, path: str = "body") -> M:
    """Validate a decoded map against message class ``cls``; unknown keys are errors."""
    if type(value) is not dict:
        raise SchemaError(f"{path}: expected a map, got {type(value).__name__}")
    specs = dataclasses.fields(cls)  # type: ignore[arg-type]
    unknown = set(value) - {f.name for f in specs}
    if unknown:
        raise SchemaError(f"{path}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    kwargs = {}
    for spec in specs:
        if spec.name in value:
            parsed = spec.metadata["check"](value[spec.name], f"{path}.{spec.name}")
            if spec.default is not dataclasses.MISSING and parsed == spec.default:
                raise SchemaError(f"{path}.{spec.name}: {parsed!r} is the default; leave the field out")
            kwargs[spec.name] = parsed
        elif spec.default is dataclasses.MISSING:
            raise SchemaError(f"{path}: missing field {spec.name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # cross-field rules live in __post_init__
        raise SchemaError(f"{path}: {exc}") from None


def unparse(message: Any) -> Any:
    """The plain map form of a message, ready for canonical encoding: its one wire form.

    A field that is None or equal to its default is left out, and number fields are
    written as float64, whatever the dataclass holds (``temperature=0`` and ``-0.0``
    go out as no field at all, ``tokens_per_s=12`` as ``12.0``).  So
    ``unparse(parse(cls, body)) == body`` for every body :func:`parse` accepts.
    """
    if dataclasses.is_dataclass(message):
        out = {}
        for f in dataclasses.fields(message):
            value = getattr(message, f.name)
            if value is None or _is_default(value, f.default):
                continue
            encode = getattr(f.metadata.get("check"), "encode", None)
            out[f.name] = encode(value) if encode is not None else unparse(value)
        return out
    if isinstance(message, (tuple, list)):
        return [unparse(v) for v in message]
    return message


def view(message: Any) -> Any:
    """The plain map form of a message with every field, defaults included: for people and
    JSON views (``inferad jobs --json``), never for the wire (that is :func:`unparse`)."""
    if dataclasses.is_dataclass(message):
        return {f.name: view(getattr(message, f.name)) for f in dataclasses.fields(message)
                if getattr(message, f.name) is not None}
    if isinstance(message, (tuple, list)):
        return [view(v) for v in message]
    return message


def _is_default(value: Any, default: Any) -> bool:
    if default is dataclasses.MISSING:
        return False
    if type(value) is list:  # a sequence field built from a list: defaults are tuples
        value = tuple(value)
    return bool(value == default)
