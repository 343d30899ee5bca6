"""The InferadRegistry contract on an in-process chain (eth-tester + py-evm)."""

import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.contract import Registry
from chain.errors import ContractRevert
from chain.ethereum import Account
from chain.merkle import build_tree, verify
from tests.conftest import ROOT

ETH = 10**18
KEY_A, KEY_B = b"\x0a" * 32, b"\x0b" * 32


class Chain:
    def __init__(self):
        from eth_tester import EthereumTester
        from web3 import EthereumTesterProvider

        from chain.ethereum import Web3

        self.tester = EthereumTester()
        self.w3 = Web3(EthereumTesterProvider(self.tester))
        owner, oracle, *others = [Account.from_key(k.to_bytes()) for k in self.tester.backend.account_keys]
        self.owner, self.oracle, self.nodes, self.clients = owner, oracle, others[:4], others[4:]
        self.registry = Registry.deploy(self.w3, owner, oracle=oracle.address, min_stake=ETH,
                                        unbonding_delay=100, withdraw_delay=50, fee_bps=500)

    def as_(self, account) -> Registry:
        return self.registry.using(account)

    def travel(self, seconds: int) -> None:
        now = self.w3.eth.get_block("latest")["timestamp"]
        self.tester.time_travel(now + seconds)
        self.tester.mine_block()

    def balance_matches_books(self) -> bool:
        r = self.registry
        books = (r.value("totalStaked") + r.value("totalDeposits") + r.value("totalRewards")
                 - r.value("totalClaimed") + r.value("feesAccrued"))
        return self.w3.eth.get_balance(r.address) == books


@pytest.fixture
def chain():
    c = Chain()
    yield c
    assert c.balance_matches_books()


def reverts(name):
    return pytest.raises(ContractRevert, match=rf"^{name}\(")


def test_compiled_artifact_matches_the_source():
    node = shutil.which("node")
    if node is None or not (ROOT / "contracts/node_modules/solc").exists():
        pytest.skip("needs node and contracts/node_modules (make install)")
    proc = subprocess.run([node, "compile.js", "--check"], cwd=ROOT / "contracts", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_register_stake_and_key_binding(chain):
    node = chain.as_(chain.nodes[0])
    node.register(KEY_A, 2 * ETH)
    stake = chain.registry.node(chain.nodes[0].address)
    assert stake.ed_key == KEY_A and stake.stake == 2 * ETH
    assert chain.registry.value("nodeOfKey", KEY_A) == chain.nodes[0].address
    assert chain.registry.is_staked(chain.nodes[0].address)
    with reverts("AlreadyRegistered"):
        node.register(KEY_B, 2 * ETH)
    with reverts("KeyTaken"):
        chain.as_(chain.nodes[1]).register(KEY_A, 2 * ETH)
    with reverts("StakeTooLow"):
        chain.as_(chain.nodes[1]).register(KEY_B, ETH // 2)
    node.add_stake(ETH)
    assert chain.registry.node(chain.nodes[0].address).stake == 3 * ETH
    with reverts("NotRegistered"):
        chain.as_(chain.nodes[2]).add_stake(ETH)
    with reverts("ZeroAmount"):
        node.add_stake(0)
    assert [e["edKey"] for e in chain.registry.events("Registered")] == [KEY_A]


def test_the_stake_table_at_a_block_is_what_the_chain_said_then(chain):
    from chain.view import StakeTable

    table = StakeTable(chain.registry)
    empty = chain.w3.eth.block_number
    chain.as_(chain.nodes[0]).register(KEY_A, 2 * ETH)
    one = chain.w3.eth.block_number
    chain.as_(chain.nodes[1]).register(KEY_B, 2 * ETH)
    chain.as_(chain.nodes[0]).request_unstake(int(1.5 * ETH))  # below minStake from here on
    latest = chain.w3.eth.block_number
    assert table.keys_at(latest) == {KEY_B}
    assert table.keys_at(one) == {KEY_A}  # asked after a later block: still what the chain said then
    assert table.keys_at(empty) == frozenset()


def test_unstake_waits_for_the_unbonding_delay(chain):
    node = chain.as_(chain.nodes[0])
    node.register(KEY_A, 2 * ETH)
    node.request_unstake(int(1.5 * ETH))
    assert not chain.registry.is_staked(chain.nodes[0].address)  # 0.5 ETH left < minStake
    with reverts("InsufficientStake"):
        node.request_unstake(ETH)
    with reverts("TooEarly"):
        node.withdraw()
    chain.travel(101)
    before = chain.w3.eth.get_balance(chain.nodes[0].address)
    node.withdraw()
    assert chain.w3.eth.get_balance(chain.nodes[0].address) > before + int(1.49 * ETH)
    with reverts("NothingToWithdraw"):
        node.withdraw()


def test_deposit_withdrawal_waits_for_its_delay(chain):
    client = chain.as_(chain.clients[0])
    client.deposit(ETH)
    with reverts("InsufficientDeposit"):
        client.request_withdraw_deposit(2 * ETH)
    client.request_withdraw_deposit(ETH // 4)
    assert chain.registry.client(chain.clients[0].address).deposit == 3 * ETH // 4
    with reverts("TooEarly"):
        client.withdraw_deposit()
    chain.travel(51)
    client.withdraw_deposit()
    assert chain.registry.client(chain.clients[0].address).withdrawing == 0
    with reverts("ZeroAmount"):
        client.deposit(0)


def settle_epoch(chain, epoch, charges, rewards, slashes=None):
    """Settle with rewards given as cumulative totals; returns the tree."""
    previous = chain.registry.value("totalRewards")
    tree = build_tree(rewards)
    chain.as_(chain.oracle).settle(epoch, tree.root, sum(rewards.values()) - previous, charges, slashes or {})
    return tree


def test_settlement_charges_clients_and_claims_pay_cumulative_rewards(chain):
    client, worker, other = chain.clients[0], chain.nodes[0], chain.nodes[1]
    chain.as_(client).deposit(ETH)
    rewards = {worker.address: 300, other.address: 100}
    tree = settle_epoch(chain, 1, {client.address: 500}, rewards)
    assert chain.registry.client(client.address).deposit == ETH - 500
    assert chain.registry.value("feesAccrued") == 100
    assert verify(tree.root, worker.address, 300, tree.proofs[worker.address])

    chain.as_(worker).claim(300, tree.proofs[worker.address])
    with reverts("NothingToClaim"):
        chain.as_(worker).claim(300, tree.proofs[worker.address])
    with reverts("InvalidProof"):
        chain.as_(other).claim(1000, tree.proofs[other.address])

    # Next epoch: one claim with the latest root pays everything not yet claimed.
    tree2 = settle_epoch(chain, 2, {client.address: 400}, {worker.address: 500, other.address: 250})
    chain.as_(other).claim(250, tree2.proofs[other.address])
    assert chain.registry.value("claimed", other.address) == 250
    chain.as_(worker).claim(500, tree2.proofs[worker.address])
    assert chain.registry.value("claimed", worker.address) == 500
    assert [e["amount"] for e in chain.registry.events("Claimed")] == [300, 250, 200]


def test_settlement_rules(chain):
    client, node = chain.clients[0], chain.nodes[0]
    chain.as_(client).deposit(1000)
    chain.as_(node).register(KEY_A, 2 * ETH)
    oracle = chain.as_(chain.oracle)
    with reverts("NotOracle"):
        chain.as_(client).settle(1, b"\0" * 32, 0, {}, {})
    with reverts("ChargeExceedsDeposit"):
        oracle.settle(1, b"\0" * 32, 0, {client.address: 1001}, {})
    with reverts("SlashExceedsStake"):
        oracle.settle(1, b"\0" * 32, 0, {}, {node.address: 3 * ETH})
    with reverts("RewardsExceedIncome"):
        oracle.settle(1, b"\0" * 32, 1001, {client.address: 1000}, {})
    evidence = b"\x0e" * 32
    oracle.settle(1, b"\0" * 32, 1000, {client.address: 1000}, {node.address: ETH}, evidence)
    assert chain.registry.node(node.address).stake == ETH
    assert chain.registry.events("Slashed")[0]["evidenceHash"] == evidence
    with reverts("EpochAlreadySettled"):
        oracle.settle(1, b"\0" * 32, 0, {}, {})
    with reverts("LengthMismatch"):
        oracle._send(oracle.contract.functions.settle(2, b"\0" * 32, 0, [client.address], [], [], [],
                                                      b"\0" * 32))


def test_a_client_withdrawing_its_deposit_is_charged_from_it_until_it_has_withdrawn(chain):
    """The oracle counts deposit + withdrawing as what a client can pay (chain.view.ChainView), so a
    client cannot escape the charges of jobs it already ran by asking for its deposit back."""
    from chain.view import ChainView

    client = chain.clients[0]
    chain.as_(client).deposit(1000)
    chain.as_(client).request_withdraw_deposit(700)

    def books():
        record = chain.registry.client(client.address)
        return record.deposit, record.withdrawing

    assert books() == (300, 700)
    view = ChainView(chain.registry)
    assert view.refresh(set(), {client.address}) and view.deposits[client.address] == 1000
    oracle = chain.as_(chain.oracle)
    oracle.settle(1, b"\0" * 32, 0, {client.address: 200}, {})
    assert books() == (100, 700)  # within the deposit: what is being withdrawn is left alone
    oracle.settle(2, b"\0" * 32, 0, {client.address: 400}, {})
    assert books() == (0, 400)  # the deposit first, then the rest from what is being withdrawn
    with reverts("ChargeExceedsDeposit"):
        oracle.settle(3, b"\0" * 32, 0, {client.address: 401}, {})
    oracle.settle(3, b"\0" * 32, 0, {client.address: 150}, {})
    assert books() == (0, 250) and chain.registry.value("totalDeposits") == 250
    assert [e["amount"] for e in chain.registry.events("Charged")] == [200, 400, 150]
    chain.travel(51)
    chain.as_(client).withdraw_deposit()  # what is left of it
    assert books() == (0, 0) and [e["amount"] for e in chain.registry.events("DepositWithdrawn")] == [250]


def test_slash_reaches_unbonding_stake(chain):
    node = chain.as_(chain.nodes[0])
    node.register(KEY_A, 2 * ETH)
    node.request_unstake(2 * ETH)  # trying to escape
    chain.as_(chain.oracle).settle(1, b"\0" * 32, 0, {}, {chain.nodes[0].address: int(1.5 * ETH)})
    assert chain.registry.node(chain.nodes[0].address).unbonding == ETH // 2


def test_owner_parameters_and_fees(chain):
    with reverts("NotOwner"):
        chain.as_(chain.clients[0]).set_parameters(1, 1, 1, 1)
    with reverts("FeeTooHigh"):
        chain.registry.set_parameters(ETH, 1, 1, 10_001)
    chain.registry.set_parameters(2 * ETH, 10, 5, 100)
    assert chain.registry.value("minStake") == 2 * ETH
    chain.registry.set_oracle(chain.clients[1].address)
    assert chain.registry.value("oracle") == chain.clients[1].address
    with reverts("NothingToWithdraw"):
        chain.registry.withdraw_fees(chain.owner.address)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.integers(0, 10**6), min_size=2, max_size=2),  # charges of 2 clients
                          st.integers(0, 3 * 10**5),  # slash of node 0
                          st.lists(st.integers(0, 100), min_size=3, max_size=3),  # reward shares
                          st.lists(st.booleans(), min_size=3, max_size=3)),  # who claims after
                min_size=1, max_size=4))
def test_books_balance_and_nobody_is_paid_twice(epochs):
    chain = Chain()
    workers = chain.nodes[:3]
    clients = chain.clients[:2]
    for c in clients:
        chain.as_(c).deposit(3 * 10**6)
    chain.as_(workers[0]).register(KEY_A, ETH)
    cumulative = {w.address: 0 for w in workers}
    paid = dict.fromkeys(cumulative, 0)
    for epoch, (charges, slash, shares, claims) in enumerate(epochs, start=1):
        deposits = [chain.registry.client(c.address).deposit for c in clients]
        charges = [min(x, d) for x, d in zip(charges, deposits, strict=True)]
        income = sum(charges) + slash
        budget = income * 9 // 10  # 10 % protocol fee
        total_shares = sum(shares) or 1
        for w, share in zip(workers, shares, strict=True):
            cumulative[w.address] += budget * share // total_shares
        tree = settle_epoch(chain, epoch, {c.address: x for c, x in zip(clients, charges, strict=True) if x},
                            dict(cumulative), {workers[0].address: slash} if slash else {})
        assert chain.balance_matches_books()
        for w, claim in zip(workers, claims, strict=True):
            if claim and cumulative[w.address] > paid[w.address]:
                chain.as_(w).claim(cumulative[w.address], tree.proofs[w.address])
                paid[w.address] = cumulative[w.address]
        assert chain.balance_matches_books()
    for w in workers:
        assert chain.registry.value("claimed", w.address) == paid[w.address] <= cumulative[w.address]
    assert chain.registry.value("totalClaimed") <= chain.registry.value("totalRewards")


def test_a_root_promising_more_than_was_credited_cannot_drain_the_contract(chain):
    client, worker = chain.clients[0], chain.nodes[0]
    chain.as_(client).deposit(ETH)
    chain.as_(chain.nodes[1]).register(KEY_B, 2 * ETH)  # funds a claim must never reach
    greedy = build_tree({worker.address: 1000})
    chain.as_(chain.oracle).settle(1, greedy.root, 500, {client.address: 500}, {})
    with reverts("ClaimExceedsRewards"):
        chain.as_(worker).claim(1000, greedy.proofs[worker.address])


def test_owner_withdraws_accrued_fees(chain):
    client = chain.clients[0]
    chain.as_(client).deposit(ETH)
    chain.as_(chain.oracle).settle(1, b"\0" * 32, 0, {client.address: 1234}, {})
    assert chain.registry.value("feesAccrued") == 1234
    before = chain.w3.eth.get_balance(chain.clients[1].address)
    chain.registry.withdraw_fees(chain.clients[1].address)
    assert chain.w3.eth.get_balance(chain.clients[1].address) == before + 1234
    assert chain.registry.value("feesAccrued") == 0
