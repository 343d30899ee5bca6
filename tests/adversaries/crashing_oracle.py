"""The real daemon, dying (like kill -9) at a chosen point of the first settlement that charges anyone.

    python -m tests.adversaries.crashing_oracle POINT start --home … --oracle --chain …

runs ``inferad start`` unchanged until its oracle settles epochs in which somebody is charged;
there the process ends with ``os._exit(9)`` (no cleanup, no flush: what SIGKILL leaves) at POINT:

``before_send``  the settlement is recorded in the store (inferad.oracle records it first), its
                 transaction not yet sent;
``after_send``   the transaction is sent, and the oracle dies before it hears back (it would wait
                 for the receipt next), so it never learns the chain booked it.

Settlements that charge nobody (empty epochs) go through, so the node lives until the point.
The shipped daemon has no such hook: crashing on purpose lives in tests only.
"""

from __future__ import annotations

import os
import sys

from chain.contract import Registry

POINTS = ("before_send", "after_send")
HONEST_SETTLE = Registry.settle


def crash() -> None:
    print(f"crashing_oracle: exiting at {POINT}", file=sys.stderr, flush=True)
    os._exit(9)


def settle(self, epoch, root, rewards_added, charges, slashes, evidence_hash=b"\0" * 32):
    if charges:
        if POINT == "before_send":
            crash()
        self.w3.eth.wait_for_transaction_receipt = lambda *args, **kwargs: crash()
    return HONEST_SETTLE(self, epoch, root, rewards_added, charges, slashes, evidence_hash)


def main() -> None:
    global POINT
    POINT = sys.argv.pop(1)
    if POINT not in POINTS:
        raise SystemExit(f"POINT must be one of {', '.join(POINTS)}")
    Registry.settle = settle
    from cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
