"""With a chain: only staked workers get jobs, only clients who can pay are served."""

import json
import signal
import subprocess

import pytest

from chain.devnet import ANVIL
from tests.conftest import INFERAD, ROOT, NodeProcess, run_cli
from tests.test_mesh_integration import peer_ids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.model,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]


def test_unstaked_workers_get_no_jobs_and_clients_without_deposit_are_refused(tmp_path):
    homes = {name: tmp_path / name for name in ("gw", "staked", "unstaked", "rich", "poor")}
    for home in homes.values():
        run_cli("init", home=home, check=True)
    devnet = subprocess.Popen([*INFERAD, "devnet", "chain", "--dir", str(tmp_path / "dev"),
                               *sum((["--fund", str(h)] for h in homes.values()), [])],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chain_json = tmp_path / "dev" / "chain.json"
    nodes = []
    try:
        wait_for(chain_json.exists, 60, "the devnet")
        chain = ("--chain", str(chain_json))
        run_cli("chain", "stake", "5", *chain, home=homes["staked"], check=True)
        run_cli("chain", "deposit", "1", *chain, home=homes["rich"], check=True)
        gw = NodeProcess(homes["gw"], "--no-model", *chain)
        nodes.append(gw)
        for name in ("staked", "unstaked"):
            nodes.append(NodeProcess(homes[name], "--bootstrap", gw.addr, "--n-ctx", "256", *chain))
        everyone = {n.info["peer_id"] for n in nodes}
        wait_for(lambda: peer_ids(gw) == everyone, 45, "adverts to converge")
        assert "not staked on chain" in nodes[2].log()

        staked_id = nodes[1].info["peer_id"]
        for _ in range(4):
            out = run_cli("submit", "--node-home", str(homes["gw"]), "Hi", "--max-tokens", "2",
                          "--max-price", "1000", "--json", home=homes["rich"], check=True)
            assert json.loads(out.stdout)["result"]["worker"] == staked_id

        refused = run_cli("submit", "--node-home", str(homes["gw"]), "Hi", "--max-tokens", "2",
                          "--max-price", "1000", home=homes["poor"])
        assert refused.returncode == 3
        assert "insufficient_deposit" in refused.stderr and "inferad chain deposit" in refused.stderr
    finally:
        for node in nodes:
            node.stop()
        devnet.send_signal(signal.SIGTERM)
        devnet.wait(30)
