"""A node's view of the chain: who is staked with which key, what clients can pay.

Refreshed in the background (blocking web3 calls, run through
``trio.to_thread`` by the node); between refreshes the node routes and admits
on the last good view, so a chain outage does not stop the network.
"""

from __future__ import annotations

import logging
import threading
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
        except (ChainError, ValueError) as exc:  # ValueError: web3 refusing an address (InvalidAddress)
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


class StakeTable:
    """The Ed25519 keys staked at a block: the set the verifier draw runs over (DESIGN §7).

    Gossiped adverts differ from node to node, so the draw cannot run over "the providers
    this node has heard of" if anyone else is to check it.  It runs over what every node
    and the oracle read alike from the chain: each key a ``Registered`` event bound at or
    before the block, whose account holds at least ``minStake`` (and more than 0) at that
    block.  Blocking (web3); cached per block, since a past block never changes.
    """

    def __init__(self, registry: Registry, deployment_block: int = 0) -> None:
        self.registry = registry
        self.deployment_block = deployment_block
        self._registered: dict[str, int] = {}  # address -> block of its first Registered event
        self._scanned_to = deployment_block - 1
        self._at: dict[int, frozenset[bytes]] = {}
        self._lock = threading.Lock()  # called from several worker threads

    def keys_at(self, block: int) -> frozenset[bytes]:
        """The staked keys at ``block``; raises ChainError when the chain cannot say."""
        with self._lock:
            return self._keys_at(block)

    def _keys_at(self, block: int) -> frozenset[bytes]:
        found = self._at.get(block)
        if found is not None:
            return found
        if block > self._scanned_to:
            for event in self.registry.events("Registered", from_block=self._scanned_to + 1, to_block=block):
                self._registered.setdefault(event["node"], event["blockNumber"])
            self._scanned_to = block
        min_stake = self.registry.value("minStake", block=block)
        keys = set()
        for address in [a for a, registered in self._registered.items() if registered <= block]:
            record = self.registry.node(address, block=block)
            if record.stake > 0 and record.stake >= min_stake and any(record.ed_key):
                keys.add(bytes(record.ed_key))
        found = frozenset(keys)
        if len(self._at) > 4096:
            self._at.clear()
        self._at[block] = found
        return found
