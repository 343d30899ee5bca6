"""Billing: who may work (stakes), who may ask (deposits), and what is owed until it settles.

With a chain (DESIGN §8), a gateway routes only to workers staked on chain
for their advertised Ethereum address *and* their node key, and admits a job
only while its client's deposit covers the job's worst case
(``max_price × max_tokens``) plus every charge this gateway reserved for that
client and the oracle has not settled yet.  The chain is read through a
:class:`chain.view.ChainView`, refreshed every few seconds; a settlement
(``lastEpoch`` moving) turns the pending charges into deposit changes, so
they are forgotten then.  Without a chain every worker counts as staked and
nothing is charged.

The jobs a node ran are indexed by epoch here too (:meth:`Billing.record_served`):
they are what the oracle's report request asks for.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from inferad.admission import JobRejected, check_client_eth
from inferad.store import AsyncStore
from p2p import wire
from scheduler.peers import PeerTable

if TYPE_CHECKING:
    from chain.contract import Registry
    from chain.devnet import ChainInfo
    from chain.view import ChainView

log = logging.getLogger("inferad.billing")
REFRESH_S = 3


class ChainUnusable(Exception):
    """The chain named by ``--chain`` cannot be read; the message says why."""


@dataclass(kw_only=True, eq=False)
class Billing:
    """Stakes, deposits and pending charges of one node.

    Args:   chain: the network's chain (``--chain``), or None for a network without one.
            eth_address: this node's Ethereum account (EIP-55).
            node_key: this node's public key (32 bytes), bound to its stake on chain.
            peer_id: this node's peer id.
            peers: the advert table, for peers' Ethereum addresses.
            store: for the epoch index of served jobs.
    """

    chain: ChainInfo | None
    eth_address: str
    node_key: bytes
    peer_id: str
    peers: PeerTable
    store: AsyncStore

    def __post_init__(self) -> None:
        self.view: ChainView | None = None  # set by connect()
        self._pending: dict[str, int] = {}  # client -> worst-case wei of jobs not yet settled
        self._clients_seen: set[str] = set()

    async def connect(self) -> None:
        """Read the chain for the first time. Raises ChainUnusable when it cannot be read."""
        from chain.contract import Registry
        from chain.errors import ChainError
        from chain.view import ChainView

        try:
            w3 = await trio.to_thread.run_sync(self.chain.web3)
            self.view = ChainView(Registry(w3, self.chain.contract))
            await self.refresh()
        except ChainError as exc:
            raise ChainUnusable(f"chain: {exc}") from None

    def registry_as(self, account: Any) -> Registry:
        """The contract sending as ``account`` (the oracle's Ethereum account); after :meth:`connect`."""
        from chain.contract import Registry

        return Registry(self.view.registry.w3, self.chain.contract, account)

    # ------------------------------------------------------------------ stakes

    def advert_is_staked(self, advert: wire.Advert) -> bool:
        if self.view is None:
            return True
        return self.view.is_staked(advert.eth, wire.public_key_from_peer_id(advert.peer_id))

    def is_staked_self(self) -> bool:
        return self.view is None or self.view.is_staked(self.eth_address, self.node_key)

    def peer_is_staked(self, peer_id: str) -> bool:
        """Staked, by the peer's advert (its Ethereum address) and its key."""
        if peer_id == self.peer_id:
            return self.is_staked_self()
        entry = self.peers.get(peer_id)
        return entry is not None and self.advert_is_staked(entry.advert)

    # ------------------------------------------------------------------ deposits and charges

    async def reserve(self, job: wire.JobRequest) -> int:
        """Refuse a job its client cannot pay for; returns the worst-case cost reserved (wei).

        Raises JobRejected: ``insufficient_deposit`` (with the numbers and the command that
        deposits), ``chain_unavailable`` (the client's deposit cannot be read yet), ``schema``
        (a client address not in EIP-55 form).
        """
        if self.view is None:
            return 0
        client = job.client_eth
        if client not in self._clients_seen:
            check_client_eth(job)
            if not await trio.to_thread.run_sync(self.view.refresh, set(), {client}):
                raise JobRejected("chain_unavailable", "the chain is unreachable, so this gateway cannot check "
                                                       "your deposit yet; retry later")
            self._clients_seen.add(client)
        worst = job.max_price * job.params.max_tokens
        pending = self._pending.get(client, 0)
        available = self.view.deposits.get(client, 0)
        if worst + pending > available:
            raise JobRejected("insufficient_deposit",
                              f"insufficient deposit: client {client} has {available} wei on deposit, this job may "
                              f"cost {worst} wei and {pending} wei are pending; deposit more with "
                              f"`inferad chain deposit`")
        self._pending[client] = pending + worst
        return worst

    def release(self, client: str, amount: int) -> None:
        """A reserved job cost that will not be charged (the job failed or was a replay)."""
        if amount:
            self._pending[client] = max(self._pending.get(client, 0) - amount, 0)

    # ------------------------------------------------------------------ epochs

    def current_epoch(self) -> int:
        return int(time.time()) // self.chain.epoch_seconds if self.chain else 0

    async def record_served(self, job_id: str) -> None:
        """Index a job this node ran under the current epoch, for the oracle's report."""
        if self.chain is not None:
            await self.store.record_served(job_id, self.current_epoch())

    async def refresh(self) -> None:
        """Re-read stakes (of this node and every fresh peer) and the deposits of clients seen."""
        nodes = {e.advert.eth for e in self.peers.fresh(time.monotonic())} | {self.eth_address}
        await trio.to_thread.run_sync(self.view.refresh, nodes, set(self._clients_seen))

    async def watch(self) -> None:
        """Refresh every ``REFRESH_S`` seconds, forever; through an outage the last view stays
        (:meth:`chain.view.ChainView.refresh` logs it)."""
        while True:
            await trio.sleep(REFRESH_S)
            settled = self.view.last_epoch
            await self.refresh()
            if self.view.last_epoch != settled:
                self._pending.clear()  # settled charges now show in the deposits

    async def status(self) -> dict[str, Any]:
        """Stake and this epoch's gross earnings (charges of the jobs this node ran, before fee and checks)."""
        epoch = self.current_epoch()
        earned = 0
        for job, result in await self.store.served_between(epoch - 1, epoch):
            request, outcome = wire.decode(job).message, wire.decode(result).message
            earned += (len(outcome.output_tokens) - outcome.continued_from) * request.max_price
        bound = self.view.stakes.get(self.eth_address)
        return {"eth": self.eth_address, "staked": self.is_staked_self(), "stake_wei": bound[1] if bound else 0,
                "epoch": epoch, "epoch_seconds": self.chain.epoch_seconds, "earned_this_epoch_wei": earned,
                "last_settled_epoch": self.view.last_epoch}
