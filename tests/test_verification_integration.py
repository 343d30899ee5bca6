"""Five real nodes + anvil, one of them a cheating worker: caught, routed around, slashed."""

import json
import signal
import subprocess
import sys

import pytest

from chain.devnet import ANVIL
from tests.conftest import INFERAD, ROOT, NodeProcess, run_cli
from tests.test_mesh_integration import peer_ids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.model,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]
CHEATER = (sys.executable, "-m", "tests.adversaries.cheating_worker", "one_token_changed")
FLOOR = 0.2  # routing.reputation_floor's default
MAX_JOBS = 40


def test_a_cheating_worker_is_caught_routed_around_and_slashed_with_checkable_evidence(tmp_path):
    names = ("oracle", "h1", "h2", "h3", "cheater")
    homes = {name: tmp_path / name for name in (*names, "client")}
    for home in homes.values():
        run_cli("init", home=home, check=True)
    devnet = subprocess.Popen([*INFERAD, "devnet", "chain", "--dir", str(tmp_path / "dev"), "--epoch-seconds", "10",
                               "--oracle", str(homes["oracle"]),
                               *sum((["--fund", str(h)] for h in homes.values()), [])],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chain_json = tmp_path / "dev" / "chain.json"
    chain = ("--chain", str(chain_json))
    nodes = {}

    def cli_json(*args, home):
        return json.loads(run_cli(*args, "--json", home=home, check=True).stdout)

    try:
        wait_for(chain_json.exists, 60, "the devnet")
        for name in names:
            run_cli("chain", "stake", "2", *chain, home=homes[name], check=True)
        run_cli("chain", "deposit", "1", *chain, home=homes["client"], check=True)
        nodes["oracle"] = NodeProcess(homes["oracle"], "--oracle", "--n-ctx", "256", *chain)
        for name in names[1:]:
            nodes[name] = NodeProcess(homes[name], "--bootstrap", nodes["oracle"].addr, "--n-ctx", "256", *chain,
                                      command=CHEATER if name == "cheater" else tuple(INFERAD))
        peer = {name: n.info["peer_id"] for name, n in nodes.items()}
        everyone = set(peer.values())
        wait_for(lambda: all(peer_ids(n) == everyone for n in nodes.values()), 60, "adverts to converge")

        def reputation_everywhere(of):
            return {name: next(p["reputation"] for p in cli_json("peers", home=homes[name]) if p["peer_id"] == of)
                    for name in names}

        def submit(i):
            return cli_json("submit", "--node-home", str(homes["oracle"]), f"Tell me about city number {i}.",
                            "--max-tokens", "8", "--ttl", "8", "--max-price", "1000", home=homes["client"])

        # Jobs go through the honest oracle's gateway; the scheduler spreads them, the cheater among the rest.
        caught_after = None
        for i in range(MAX_JOBS):
            submit(i)
            if max(reputation_everywhere(peer["cheater"]).values()) < FLOOR:
                caught_after = i + 1
                break
        if caught_after is None:  # the last attestations may still be on their way
            wait_for(lambda: max(reputation_everywhere(peer["cheater"]).values()) < FLOOR, 60,
                     "the cheater's reputation to fall below the floor on every node")
        print(f"cheater caught after {caught_after or MAX_JOBS} jobs")

        # Nobody routes to it any more.
        for i in range(6):
            assert submit(100 + i)["result"]["worker"] != peer["cheater"]

        # No honest worker was ever found invalid; the cheater's results were.
        jobs = cli_json("jobs", home=homes["oracle"])
        verdicts = {}
        for job in jobs:
            for a in (job.get("verification") or {}).get("attestations", []):
                verdicts.setdefault(a["worker"] == peer["cheater"], set()).add(a["verdict"])
        assert verdicts.get(False, set()) <= {"valid"}, verdicts
        assert "invalid" in verdicts.get(True, set())
        for name in ("h1", "h2", "h3"):
            assert min(reputation_everywhere(peer[name]).values()) >= 0.5

        # The next settlement slashes it, with evidence that any node fetches and re-checks.
        def slashes():
            return cli_json("chain", "status", *chain, home=homes["cheater"])["slashes"]

        wait_for(slashes, 90, "the settlement to slash the cheater")
        slash = slashes()[0]
        assert slash["amount_wei"] == 10**18  # half of the 2 ETH stake
        for name in ("h1", "h2"):
            evidence = cli_json("evidence", slash["evidence"], home=homes[name])
            assert evidence["hash"] == slash["evidence"] and evidence["worker"] == peer["cheater"]
            assert sum(a["verdict"] == "invalid" for a in evidence["attestations"]) >= 2
            assert evidence["rescored_here"]["verdict"] == "invalid"
    finally:
        for node in nodes.values():
            node.stop()
        devnet.send_signal(signal.SIGTERM)
        devnet.wait(30)
