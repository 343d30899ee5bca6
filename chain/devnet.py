"""A local development chain: anvil (npm @foundry-rs/anvil) with the registry deployed.

``chain.json`` is how nodes and commands find a chain: RPC URL, chain id,
contract address and deployment block.  anvil's well-known development
accounts (from its default mnemonic, public knowledge, devnet only) deploy
the contract and fund the homes that will stake and deposit.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chain.errors import ChainError

ANVIL = Path(__file__).resolve().parent.parent / "contracts" / "node_modules" / ".bin" / "anvil"
# anvil's first development account (default mnemonic "test test … junk"): devnet only.
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ETH = 10**18


@dataclass(frozen=True)
class ChainInfo:
    rpc_url: str
    chain_id: int
    contract: str
    deployment_block: int
    epoch_seconds: int = 30  # settlement period of the network (devnet: 30 s)

    @classmethod
    def load(cls, path: str | Path) -> ChainInfo:
        try:
            data = json.loads(Path(path).read_text())
            return cls(rpc_url=data["rpc_url"], chain_id=int(data["chain_id"]), contract=data["contract"],
                       deployment_block=int(data["deployment_block"]),
                       epoch_seconds=int(data.get("epoch_seconds", 30)))
        except FileNotFoundError:
            raise ChainError(f"{path} does not exist: start a devnet (`inferad devnet chain --dir …`) "
                             "or pass the chain.json of your network") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ChainError(f"{path} is not a chain.json ({exc})") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    def web3(self) -> Any:
        """A connected Web3 whose chain id is the one promised (a wrong RPC is a clear error)."""
        from chain.ethereum import HTTPProvider, Web3

        w3 = Web3(HTTPProvider(self.rpc_url, request_kwargs={"timeout": 10}))
        try:
            chain_id = w3.eth.chain_id
        except Exception as exc:
            raise ChainError(f"chain unreachable at {self.rpc_url}: {type(exc).__name__}") from None
        if chain_id != self.chain_id:
            raise ChainError(f"{self.rpc_url} is chain {chain_id}, chain.json says {self.chain_id}")
        return w3


class Anvil:
    """An anvil process on ``host`` (127.0.0.1 by default) and a free port; ``state`` keeps the chain
    across restarts."""

    def __init__(self, *, state: Path | None = None, port: int = 0, block_time: float | None = None,
                 host: str = "127.0.0.1") -> None:
        if not ANVIL.exists():
            raise ChainError(f"{ANVIL} is missing: run `make install` (installs the pinned npm anvil)")
        args = [str(ANVIL), "--host", host, "--port", str(port)]
        if state is not None:
            args += ["--state", str(state)]
        if block_time:
            args += ["--block-time", str(block_time)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.proc.stdout:
            match = re.search(r"Listening on (\d+\.\d+\.\d+\.\d+:\d+)", line)
            if match:
                self.rpc_url = f"http://{match.group(1)}"
                break
        else:
            raise ChainError(f"anvil exited with {self.proc.wait()} before listening")
        # Keep draining its output so a chatty anvil never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: anvil writes --state on the way out
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def deploy(rpc_url: str, *, oracle: str | None = None, fund: list[str] = (), fund_eth: int = 100,
           min_stake_eth: int = 1, unbonding_delay: int = 60, withdraw_delay: int = 60, fee_bps: int = 500,
           epoch_seconds: int = 30):
    """Deploy the registry with the dev account and fund ``fund`` addresses; the ChainInfo."""
    from chain.contract import Registry
    from chain.ethereum import Account, HTTPProvider, Web3

    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
    deployer = Account.from_key(DEV_KEY)
    registry = Registry.deploy(w3, deployer, oracle=oracle or deployer.address, min_stake=min_stake_eth * ETH,
                               unbonding_delay=unbonding_delay, withdraw_delay=withdraw_delay, fee_bps=fee_bps)
    block = w3.eth.block_number
    for address in fund:
        fund_account(w3, address, fund_eth * ETH)
    return ChainInfo(rpc_url=rpc_url, chain_id=w3.eth.chain_id, contract=registry.address, deployment_block=block,
                     epoch_seconds=epoch_seconds)


def fund_account(w3: Any, address: str, amount: int) -> None:
    from chain.ethereum import Account

    dev = Account.from_key(DEV_KEY)
    tx = {"to": w3.to_checksum_address(address), "value": amount, "gas": 21000, "chainId": w3.eth.chain_id,
          "nonce": w3.eth.get_transaction_count(dev.address, "pending"), "gasPrice": w3.eth.gas_price}
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(dev.sign_transaction(tx).raw_transaction))
