"""A node's view of the chain: who is staked with which key, what clients can pay.

Refreshed in the background (blocking web3 calls, run through
``trio.to_thread`` by the node); between refreshes the node routes and admits
on the last good view, so a chain outage does not stop the network.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from chain.contract import Registry
from chain.errors import ChainError

log = logging.getLogger("inferad.chain")


@dataclass
class ChainView:
    registry: Registry
    min_stake: int = 0
    stakes: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # eth address -> (ed key, stake)
    deposits: dict[str, int] = field(default_factory=dict)  # client -> chargeable wei (deposit + withdrawing)
    last_epoch: int = 0
    oracle: str | None = None
    refreshed_at: float = 0.0

    def refresh(self, nodes: set[str], clients: set[str]) -> bool:
        """Re-read the given accounts (blocking); keeps the old view (and says False) on failure."""
        try:
            min_stake = self.registry.value("minStake")
            oracle = self.registry.value("oracle")
            stakes = {}
            for address in set(nodes) | {oracle}:
                record = self.registry.node(address)
                stakes[address] = (record.ed_key, record.stake)
            deposits = {}
            for address in clients:
                record = self.registry.client(address)
                deposits[address] = record.deposit + record.withdrawing
            last_epoch = self.registry.value("lastEpoch")
        except ChainError as exc:
            log.warning("chain view not refreshed (%s); using the one from %.0f s ago", exc,
                        time.monotonic() - self.refreshed_at)
            return False
        self.min_stake, self.last_epoch, self.oracle = min_stake, last_epoch, oracle
        self.stakes.update(stakes)
        self.deposits.update(deposits)
        self.refreshed_at = time.monotonic()
        return True

    def is_staked(self, address: str, ed_key: bytes) -> bool:
        """Staked means: the address is bound on chain to this very Ed25519 key, with enough stake."""
        bound = self.stakes.get(address)
        return bound is not None and bound[0] == ed_key and bound[1] > 0 and bound[1] >= self.min_stake

    @property
    def oracle_key(self) -> bytes | None:
        """The Ed25519 node key the oracle's address registered, if it did."""
        bound = self.stakes.get(self.oracle) if self.oracle else None
        return bound[0] if bound and bound[0] != b"\0" * 32 else None

    def learn_keys(self, ed_keys: set[bytes]) -> None:
        """Find (on chain) the accounts of node keys this view has not seen, e.g. of a worker whose
        adverts stopped before the oracle settled its jobs (blocking)."""
        known = {key for key, _ in self.stakes.values()}
        addresses = set()
        for key in ed_keys - known:
            try:
                address = self.registry.value("nodeOfKey", key)
            except ChainError:
                return
            if int(address, 16):
                addresses.add(address)
        if addresses:
            self.refresh(addresses, set())

    def address_of_key(self, ed_key: bytes) -> str | None:
        return next((a for a, (key, stake) in self.stakes.items() if key == ed_key and stake > 0), None)
