"""With a chain: only staked workers get jobs, only clients who can pay are served."""

import json

import pytest

from tests.chainnet import NEEDS_CHAIN
from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.model, NEEDS_CHAIN]


def test_unstaked_workers_get_no_jobs_and_clients_without_deposit_are_refused(chain_network):
    net = chain_network("gw", "staked", "unstaked", "rich", "poor")
    homes = net.homes
    net.stake("staked", amount=5)
    net.deposit("rich", amount=1)
    net.start("gw", "--no-model")
    for name in ("staked", "unstaked"):
        net.start(name, "--n-ctx", "256", bootstrap="gw")
    net.wait_converged("gw", timeout=45)
    assert "not staked on chain" in net.nodes["unstaked"].log()

    staked_id = net.nodes["staked"].info["peer_id"]
    for _ in range(4):
        out = run_cli("submit", "--node-home", str(homes["gw"]), "Hi", "--max-tokens", "2",
                      "--max-price", "1000", "--json", home=homes["rich"], check=True)
        assert json.loads(out.stdout)["result"]["worker"] == staked_id

    refused = run_cli("submit", "--node-home", str(homes["gw"]), "Hi", "--max-tokens", "2",
                      "--max-price", "1000", home=homes["poor"])
    assert refused.returncode == 3
    assert "insufficient_deposit" in refused.stderr and "inferad chain deposit" in refused.stderr
