"""Contract reverts, decoded the same way whichever chain raised them.

A custom error arrives as ``ContractCustomError`` with ABI-encoded ``.data``
from anvil, and as ``TransactionFailed``/``ContractLogicError`` text or data
from eth-tester; both become one :class:`ContractRevert` naming the error and
its arguments, so callers and tests match on ``exc.name``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak


class ChainError(Exception):
    """The chain is unreachable or answered something unexpected."""


class ContractRevert(ChainError):
    def __init__(self, name: str, args: tuple = (), raw: str = "") -> None:
        super().__init__(f"{name}({', '.join(map(str, args))})" if name else raw)
        self.name = name
        self.args_ = args


def error_table(abi: list[dict]) -> dict[bytes, tuple[str, list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") == "error":
            types = [i["type"] for i in item["inputs"]]
            selector = keccak(f"{item['name']}({','.join(types)})".encode())[:4]
            table[selector] = (item["name"], types)
    return table


def decode_revert(exc: BaseException, table: dict[bytes, tuple[str, list[str]]]) -> ContractRevert | None:
    """The ContractRevert carried by a web3/eth-tester exception, or None if it is no revert."""
    candidates: list[bytes] = []
    for value in (getattr(exc, "data", None), *getattr(exc, "args", ())):
        if isinstance(value, bytes):
            candidates.append(value)
        elif isinstance(value, str):
            candidates += [bytes.fromhex(h[2:]) for h in re.findall(r"0x(?:[0-9a-fA-F]{2}){4,}", value)]
            for literal in re.findall(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"", value):  # eth-tester
                try:
                    candidates.append(ast.literal_eval(literal))
                except (ValueError, SyntaxError):
                    pass
    for raw in candidates:
        if raw[:4] in table:
            name, types = table[raw[:4]]
            try:
                values: tuple[Any, ...] = tuple(abi_decode(types, raw[4:]))
            except Exception:
                values = ()
            return ContractRevert(name, values, "0x" + raw.hex())
    return None
