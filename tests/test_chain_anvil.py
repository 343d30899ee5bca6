"""The chain commands against a real local chain (anvil from npm)."""

import json
import signal
import subprocess
import time

import pytest

from chain.contract import Registry
from chain.devnet import ANVIL, DEV_KEY, Anvil, ChainInfo, deploy, fund_account
from chain.errors import ChainError, ContractRevert
from chain.ethereum import Account
from chain.merkle import build_tree
from tests.conftest import INFERAD, ROOT, run_cli

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]
ETH = 10**18


@pytest.fixture
def devnet(tmp_path):
    homes = {name: tmp_path / name for name in ("node", "client")}
    for home in homes.values():
        run_cli("init", home=home, check=True)
    proc = subprocess.Popen([*INFERAD, "devnet", "chain", "--dir", str(tmp_path / "dev"),
                             *sum((["--fund", str(h)] for h in homes.values()), [])],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chain_json = tmp_path / "dev" / "chain.json"
    deadline = time.monotonic() + 60
    while not chain_json.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    yield homes, chain_json, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def chain_cli(*args, home, chain_json, check=True):
    return run_cli("chain", *args, "--chain", str(chain_json), home=home, check=check)


def test_stake_deposit_and_status_on_a_devnet(devnet):
    homes, chain_json, _ = devnet
    chain_cli("stake", "10", home=homes["node"], chain_json=chain_json)
    chain_cli("deposit", "1", home=homes["client"], chain_json=chain_json)
    node = json.loads(chain_cli("status", "--json", home=homes["node"], chain_json=chain_json).stdout)
    assert node["staked"] and node["stake_wei"] == 10 * ETH and node["ed25519_key_matches_home"]
    client = json.loads(chain_cli("status", "--json", home=homes["client"], chain_json=chain_json).stdout)
    assert client["deposit_wei"] == ETH and not client["staked"]

    too_low = chain_cli("stake", "0.5", home=homes["client"], chain_json=chain_json, check=False)
    assert too_low.returncode == 1 and "StakeTooLow" in too_low.stderr
    chain_cli("unstake", "10", home=homes["node"], chain_json=chain_json)
    early = chain_cli("withdraw", home=homes["node"], chain_json=chain_json, check=False)
    assert "TooEarly" in early.stderr


def test_wrong_chain_id_and_unreachable_chain_are_clear_errors(devnet, tmp_path):
    homes, chain_json, _ = devnet
    info = json.loads(chain_json.read_text())
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(dict(info, chain_id=1)))
    assert "chain.json says 1" in chain_cli("status", home=homes["node"], chain_json=wrong, check=False).stderr
    wrong.write_text(json.dumps(dict(info, rpc_url="http://127.0.0.1:1")))
    assert "unreachable" in chain_cli("status", home=homes["node"], chain_json=wrong, check=False).stderr


def test_devnet_keeps_its_chain_across_restarts(tmp_path):
    state = tmp_path / "state.json"
    anvil = Anvil(state=state)
    info = deploy(anvil.rpc_url, fund=["0x" + "12" * 20])
    anvil.stop()
    anvil = Anvil(state=state)
    try:
        w3 = ChainInfo(anvil.rpc_url, info.chain_id, info.contract, info.deployment_block).web3()
        assert w3.eth.get_balance("0x" + "12" * 20) == 100 * ETH
        assert Registry(w3, info.contract).value("minStake") == ETH
    finally:
        anvil.stop()


def test_settlement_and_claims_on_anvil():
    """The heart of the eth-tester suite, on a real node (chain id checked, custom errors decoded)."""
    anvil = Anvil()
    try:
        info = deploy(anvil.rpc_url)
        w3 = info.web3()
        dev = Account.from_key(DEV_KEY)
        worker, client = Account.create(), Account.create()
        for account in (worker, client):
            fund_account(w3, account.address, 5 * ETH)
        registry = Registry(w3, info.contract, dev)
        registry.using(client).deposit(ETH)
        tree = build_tree({worker.address: 700})
        registry.settle(1, tree.root, 700, {client.address: 1000}, {})
        with pytest.raises(ContractRevert, match="EpochAlreadySettled"):
            registry.settle(1, tree.root, 0, {}, {})
        registry.using(worker).claim(700, tree.proofs[worker.address])
        with pytest.raises(ContractRevert, match="NothingToClaim"):
            registry.using(worker).claim(700, tree.proofs[worker.address])
        assert registry.value("feesAccrued") == 300
        # Time travel on anvil: the unbonding delay passes.
        registry.using(worker).register(b"\x01" * 32, ETH)
        registry.using(worker).request_unstake(ETH)
        w3.provider.make_request("evm_increaseTime", [61])
        w3.provider.make_request("evm_mine", [])
        registry.using(worker).withdraw()
    finally:
        anvil.stop()
    with pytest.raises(ChainError, match="unreachable"):
        info.web3()
