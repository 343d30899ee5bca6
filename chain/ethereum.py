"""The one door to the Ethereum stack (web3, eth-account), and why there is one.

py_ecc, which the Ethereum packages pull in, raises Python's recursion limit to
100,000 when it is first imported (``sys.setrecursionlimit(max(100000, …))``
in its ``__init__``).  The limit is process-wide.  Under it, a recursive C
decoder (the ``json`` module's scanner, ``repr`` of nested lists, ``pickle``)
no longer stops with RecursionError at a thousand levels: it recurses until
the thread's C stack overflows, and the process dies of a segmentation fault.
One HTTP request of 100,000 nested ``[`` killed a node that way.

So every import of web3 and eth-account in this project goes through this
module: it imports them (and py_ecc, so its side effect happens here and only
here) once, then puts the limit back to :data:`RECURSION_LIMIT`.  Decoders of
network input do not rely on this alone: each bounds depth itself (orjson for
HTTP bodies, msgpack's fixed stack and ``p2p.wire``'s nesting bound for frames);
this keeps whatever else the process parses from turning a bug into a crash.
"""

from __future__ import annotations

import sys
from typing import Any

# CPython's default.  Nothing inferad runs recurses deeper; py_ecc's pairing code, which
# wanted more, serves only eth-tester's precompiles in unit tests (and py-evm, the tests'
# in-process chain, raises the limit again for its own call depth: tests only).
RECURSION_LIMIT = 1000

try:
    import py_ecc  # noqa: F401  (raises the limit; imported here so it happens once, here)
except ImportError:  # not every eth-account release depends on it
    pass
from eth_account import Account  # noqa: E402

sys.setrecursionlimit(RECURSION_LIMIT)

__all__ = ["Account", "RECURSION_LIMIT"]  # and, on first use, Web3 and HTTPProvider


def __getattr__(name: str) -> Any:
    """``Web3`` and ``HTTPProvider``, imported on first use: web3 costs 0.6 s of imports that
    commands needing only a key (``inferad init``) should not pay."""
    if name not in ("Web3", "HTTPProvider"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import web3

    sys.setrecursionlimit(RECURSION_LIMIT)
    return getattr(web3, name)
