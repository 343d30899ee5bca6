"""The verification beacon: the first block at or after a job's expiry, found by anyone (eth-tester)."""

import pytest

from chain.beacon import Beacon, BeaconFinder


@pytest.fixture
def chain():
    from eth_tester import EthereumTester
    from web3 import EthereumTesterProvider

    from chain.ethereum import Web3

    tester = EthereumTester()
    w3 = Web3(EthereumTesterProvider(tester))
    start = w3.eth.get_block("latest")["timestamp"]
    for step in range(1, 21):  # one block every 5 s
        tester.time_travel(start + 5 * step)
        tester.mine_blocks(1)
    return w3, start


def test_the_beacon_is_the_first_block_at_or_after_the_moment(chain):
    w3, start = chain
    finder = BeaconFinder(w3)
    beacon = finder.first_at_or_after(start + 23)
    assert beacon.timestamp >= start + 23
    assert w3.eth.get_block(beacon.number - 1)["timestamp"] < start + 23
    assert beacon.hash == bytes(w3.eth.get_block(beacon.number)["hash"])


def test_no_beacon_before_a_block_reaches_the_moment(chain):
    w3, start = chain
    assert BeaconFinder(w3).first_at_or_after(start + 10_000) is None


def test_verifiers_accept_only_that_first_block(chain):
    w3, start = chain
    finder = BeaconFinder(w3)
    beacon = finder.first_at_or_after(start + 23)
    assert finder.is_beacon(beacon, start + 23)
    later = finder.block(beacon.number + 1)
    assert not finder.is_beacon(later, start + 23)  # a gateway may not pick a later block
    assert not finder.is_beacon(Beacon(beacon.number, b"\1" * 32, 0), start + 23)  # nor invent a hash
