"""A tiny declarative schema language for wire bodies.

Every field of every message says its type and bounds next to its name, so a
reader sees the whole contract of a message in one place and the decoder can
reject anything else before the rest of the node touches it.  Messages are
frozen dataclasses whose fields carry a *check*: a function ``(value, path) ->
value`` that returns the validated (possibly normalised) value or raises
:class:`SchemaError`.
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
    """A finite real number; integers are accepted and normalised to float."""

    def check(value: Any, path: str) -> float:
        if type(value) not in (int, float):
            raise SchemaError(f"{path}: expected a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise SchemaError(f"{path}: {value} is outside [{lo}, {hi}]")
        return value

    return check


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
    """A field that may be absent (or nil); absent fields are not encoded."""

    def check(value: Any, path: str) -> Any:
        return None if value is None else inner(value, path)

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
            kwargs[spec.name] = spec.metadata["check"](value[spec.name], f"{path}.{spec.name}")
        elif spec.default is dataclasses.MISSING:
            raise SchemaError(f"{path}: missing field {spec.name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # cross-field rules live in __post_init__
        raise SchemaError(f"{path}: {exc}") from None


def unparse(message: Any) -> Any:
    """The plain map form of a message, ready for canonical encoding."""
    if dataclasses.is_dataclass(message):
        return {
            f.name: unparse(getattr(message, f.name))
            for f in dataclasses.fields(message)
            if getattr(message, f.name) is not None
        }
    if isinstance(message, (tuple, list)):
        return [unparse(v) for v in message]
    return message
