"""The verification beacon: the first block at or after a moment (DESIGN §7).

A job's beacon is the hash of the first block whose timestamp is at or after
the job's expiry.  The worker must deliver (and so sign) its result before
the job expires, so no worker can know the beacon when it signs; and since
the expiry is in the client-signed job, anyone with the job and chain access
finds the same block: the gateway to draw, verifiers and the oracle to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chain.errors import ChainError


@dataclass(frozen=True)
class Beacon:
    number: int
    hash: bytes
    timestamp: int


class BeaconFinder:
    """Binary search over block timestamps, with a cache (blocks never change on a
    chain without reorgs, like anvil's or a finalized one)."""

    def __init__(self, w3: Any) -> None:
        self.w3 = w3
        self._blocks: dict[int, Beacon] = {}

    def block(self, number: int) -> Beacon:
        found = self._blocks.get(number)
        if found is None:
            try:
                raw = self.w3.eth.get_block(number)
            except Exception as exc:
                raise ChainError(f"cannot read block {number}: {exc}") from None
            found = Beacon(number=number, hash=bytes(raw["hash"]), timestamp=int(raw["timestamp"]))
            if len(self._blocks) > 65536:
                self._blocks.clear()
            self._blocks[number] = found
        return found

    def first_at_or_after(self, timestamp: int, *, since: int = 0) -> Beacon | None:
        """The first block with ``timestamp`` or later; None while none has been mined."""
        try:
            latest = self.w3.eth.block_number
        except Exception as exc:
            raise ChainError(f"cannot read the chain head: {exc}") from None
        if self.block(latest).timestamp < timestamp:
            return None
        lo, hi = since, latest  # invariant: block hi qualifies
        while lo < hi:
            mid = (lo + hi) // 2
            if self.block(mid).timestamp >= timestamp:
                hi = mid
            else:
                lo = mid + 1
        return self.block(hi)

    def is_beacon(self, beacon: Beacon, timestamp: int) -> bool:
        """Whether ``beacon`` is that first block (what verifiers and the oracle check)."""
        mined = self.block(beacon.number)
        if mined.hash != beacon.hash or mined.timestamp < timestamp:
            return False
        return beacon.number == 0 or self.block(beacon.number - 1).timestamp < timestamp
