"""Typed access to the InferadRegistry contract over web3.py (sync API).

web3's async API is asyncio-only, so the node calls these blocking methods
through ``trio.to_thread.run_sync``, with one limiter per sending account so
nonces go out in order.  Transactions are signed locally with the account's
key (the same path on anvil, eth-tester and a real chain), gas is estimated
with a margin, transient RPC errors are retried, and reverts come back as
:class:`~chain.errors.ContractRevert` naming the custom error.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chain.errors import ChainError, ContractRevert, decode_revert, error_table

ARTIFACT = Path(__file__).resolve().parent.parent / "contracts" / "build" / "InferadRegistry.json"
GAS_MARGIN = 1.2
RETRIES = 3


def load_artifact() -> dict:
    try:
        return json.loads(ARTIFACT.read_text())
    except FileNotFoundError:
        raise ChainError(f"{ARTIFACT} is missing: run `make contracts`") from None


@dataclass(frozen=True)
class NodeStake:
    ed_key: bytes
    stake: int
    unbonding: int
    unbonding_at: int


@dataclass(frozen=True)
class ClientDeposit:
    deposit: int
    withdrawing: int
    withdraw_at: int


class Registry:
    def __init__(self, w3: Any, address: str | None, account: Any = None) -> None:
        """The contract at ``address``; with ``None``, a contract still to deploy."""
        artifact = load_artifact()
        self.w3 = w3
        if address is None:
            self.address = None
            self.contract = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        else:
            self.address = w3.to_checksum_address(address)
            self.contract = w3.eth.contract(address=self.address, abi=artifact["abi"])
        self.account = account
        self._errors = error_table(artifact["abi"])

    @classmethod
    def deploy(cls, w3: Any, account: Any, *, oracle: str, min_stake: int, unbonding_delay: int,
               withdraw_delay: int, fee_bps: int) -> Registry:
        undeployed = cls(w3, None, account)
        receipt = undeployed._send(undeployed.contract.constructor(oracle, min_stake, unbonding_delay,
                                                                   withdraw_delay, fee_bps))
        return cls(w3, receipt["contractAddress"], account)

    def using(self, account: Any) -> Registry:
        """The same contract, sending as ``account``."""
        return Registry(self.w3, self.address, account)

    # ------------------------------------------------------------------ transactions

    def _send(self, call: Any, value: int = 0) -> dict:
        if self.account is None:
            raise ChainError("this Registry has no account to send from")
        tx = {"from": self.account.address, "value": value}
        try:
            gas = self._retry(lambda: call.estimate_gas(tx))
        except Exception as exc:
            raise self._revert(exc) from None
        tx.update(gas=int(gas * GAS_MARGIN), nonce=self._retry(lambda: self.w3.eth.get_transaction_count(
            self.account.address, "pending")), chainId=self._retry(lambda: self.w3.eth.chain_id))
        tx.update(self._fees())
        signed = self.account.sign_transaction(call.build_transaction(tx))
        try:
            tx_hash = self._retry(lambda: self.w3.eth.send_raw_transaction(signed.raw_transaction))
        except Exception as exc:
            raise self._revert(exc) from None
        receipt = self._retry(lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60))
        if receipt["status"] != 1:
            raise ChainError(f"transaction {tx_hash.hex()} reverted")
        return dict(receipt)

    def _fees(self) -> dict:
        block = self.w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:
            return {"gasPrice": self.w3.eth.gas_price}
        tip = 10**9
        return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}

    def _retry(self, fn: Any) -> Any:
        """Retry transient RPC failures (connection refused/reset, timeouts) with backoff."""
        import requests

        for attempt in range(RETRIES):
            try:
                return fn()
            except (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError) as exc:
                if attempt == RETRIES - 1:
                    raise ChainError(f"chain unreachable: {exc}") from None
                time.sleep(0.2 * 2**attempt)

    def _revert(self, exc: BaseException) -> ChainError:
        return decode_revert(exc, self._errors) or (exc if isinstance(exc, ChainError) else
                                                   ContractRevert("", (), str(exc)))

    def register(self, ed_key: bytes, stake: int) -> dict:
        return self._send(self.contract.functions.register(ed_key), stake)

    def add_stake(self, amount: int) -> dict:
        return self._send(self.contract.functions.addStake(), amount)

    def request_unstake(self, amount: int) -> dict:
        return self._send(self.contract.functions.requestUnstake(amount))

    def withdraw(self) -> dict:
        return self._send(self.contract.functions.withdraw())

    def deposit(self, amount: int) -> dict:
        return self._send(self.contract.functions.deposit(), amount)

    def request_withdraw_deposit(self, amount: int) -> dict:
        return self._send(self.contract.functions.requestWithdrawDeposit(amount))

    def withdraw_deposit(self) -> dict:
        return self._send(self.contract.functions.withdrawDeposit())

    def settle(self, epoch: int, root: bytes, rewards_added: int, charges: dict[str, int],
               slashes: dict[str, int], evidence_hash: bytes = b"\0" * 32) -> dict:
        return self._send(self.contract.functions.settle(
            epoch, root, rewards_added, list(charges), list(charges.values()), list(slashes),
            list(slashes.values()), evidence_hash))

    def claim(self, cumulative: int, proof: list[bytes]) -> dict:
        return self._send(self.contract.functions.claim(cumulative, proof))

    def set_parameters(self, min_stake: int, unbonding_delay: int, withdraw_delay: int, fee_bps: int) -> dict:
        return self._send(self.contract.functions.setParameters(min_stake, unbonding_delay, withdraw_delay, fee_bps))

    def set_oracle(self, oracle: str) -> dict:
        return self._send(self.contract.functions.setOracle(oracle))

    def withdraw_fees(self, to: str) -> dict:
        return self._send(self.contract.functions.withdrawFees(to))

    # ------------------------------------------------------------------ views

    def _view(self, name: str, *args: Any, block: int | str = "latest") -> Any:
        return self._retry(lambda: getattr(self.contract.functions, name)(*args).call(block_identifier=block))

    def node(self, address: str, *, block: int | str = "latest") -> NodeStake:
        """The account's stake record, as of ``block`` (a number, or "latest")."""
        return NodeStake(*self._view("nodes", address, block=block))

    def client(self, address: str) -> ClientDeposit:
        return ClientDeposit(*self._view("clients", address))

    def is_staked(self, address: str) -> bool:
        return self._view("isStaked", address)

    def value(self, name: str, *args: Any, block: int | str = "latest") -> Any:
        """A public variable: lastEpoch, rewardsRoot, minStake, totalRewards, claimed(addr)…"""
        return self._view(name, *args, block=block)

    def events(self, name: str, from_block: int = 0, to_block: int | str = "latest") -> list[dict]:
        event = getattr(self.contract.events, name)
        logs = self._retry(lambda: event.get_logs(from_block=from_block, to_block=to_block))
        return [dict(e["args"], blockNumber=e["blockNumber"]) for e in logs]
