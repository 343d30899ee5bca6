"""Three real nodes + anvil: jobs, their verification, the settlement on chain, claims."""

import json
import re
import sys
import time

import pytest

from tests.chainnet import NEEDS_CHAIN, ChainNetwork
from tests.conftest import INFERAD, NodeProcess, run_cli
from tests.test_mesh_integration import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.model, NEEDS_CHAIN]
PRICE = 1000  # wei per token
JOBS = 20


def chain_of_four(chain_network, epoch_seconds: int) -> ChainNetwork:
    """Homes oracle, w1, w2 (each staking 2 ETH) and client (1 ETH deposited) on a running chain
    whose oracle is the oracle home's account."""
    net = chain_network("oracle", "w1", "w2", "client", epoch_seconds=epoch_seconds, oracle="oracle")
    net.stake("oracle", "w1", "w2", amount=2)
    net.deposit("client", amount=1)
    return net


def workers_claim_their_jobs_less_the_fee(net: ChainNetwork, charged: int, counted) -> dict[str, int]:
    """Each worker's reward is the charges of its ``counted`` jobs less the 5 % fee, together all of
    ``charged`` less the fee; each with a reward claims exactly it. Returns the rewards, by worker."""
    earned = {}
    for name in ("w1", "w2"):
        jobs = json.loads(run_cli("jobs", "--json", home=net.homes[name], check=True).stdout)
        earned[name] = sum(len(j["result"]["output_tokens"]) * PRICE * 95 // 100 for j in jobs if counted(j))
    assert sum(earned.values()) == charged * 95 // 100
    for name in ("w1", "w2"):
        if earned[name]:
            assert net.chain_status(name)["claimable_wei"] == earned[name]
            out = run_cli("chain", "claim", *net.chain, home=net.homes[name], check=True)
            assert f"claimed {earned[name]} wei" in out.stdout
    return earned


def test_an_epoch_settles_to_the_wei_and_workers_claim_exactly_their_reward(chain_network):
    net = chain_of_four(chain_network, 8)
    homes, chain, status = net.homes, net.chain, net.chain_status
    deposit_before = status("client")["deposit_wei"]
    net.start("oracle", "--no-model", "--oracle")
    for name in ("w1", "w2"):
        net.start(name, "--n-ctx", "256", bootstrap="oracle")
    net.wait_converged("oracle", timeout=45)

    tokens = 0
    for i in range(JOBS):
        # A result signed or arriving after expiry is never delivered: leave a loaded machine room.
        out = run_cli("submit", "--node-home", str(homes["oracle"]), f"Count to {i}:", "--max-tokens", "3",
                      "--ttl", "20", "--max-price", str(PRICE), "--json", home=homes["client"], check=True)
        tokens += len(json.loads(out.stdout)["result"]["output_tokens"])
    charged = tokens * PRICE

    # Every job is charged exactly once, in the settlement after the epoch it ran in.
    wait_for(lambda: status("client")["deposit_wei"] <= deposit_before - charged, 90, "the epochs to settle")
    assert status("client")["deposit_wei"] == deposit_before - charged

    # Each worker's reward is its jobs' charges less the 5 % fee, claimable exactly once.
    earned = workers_claim_their_jobs_less_the_fee(net, charged, lambda job: job["status"] == "done")
    for name in ("w1", "w2"):
        if earned[name]:
            assert status(name)["claimed_wei"] == earned[name] and status(name)["claimable_wei"] == 0
            again = run_cli("chain", "claim", *chain, home=homes[name], check=True)
            assert "nothing to claim" in again.stdout


@pytest.mark.long
def test_jobs_run_through_a_chain_outage_and_settle_once_when_it_returns(chain_network):
    net = chain_of_four(chain_network, 6)  # two workers: each verifies the other's jobs
    homes, chain = net.homes, net.chain
    oracle = net.start("oracle", "--no-model", "--oracle")
    for name in ("w1", "w2"):
        net.start(name, "--n-ctx", "256", bootstrap="oracle")
    net.wait_converged("oracle", timeout=45)
    tokens = 0

    def submit(i):
        out = run_cli("submit", "--node-home", str(homes["oracle"]), f"Hello {i}", "--max-tokens", "3",
                      "--ttl", "20", "--max-price", str(PRICE), "--json", home=homes["client"], check=True)
        return len(json.loads(out.stdout)["result"]["output_tokens"])

    tokens += submit(0)  # the gateway now knows this client's deposit
    net.stop_chain()  # the chain goes away mid-epoch…
    for i in range(1, 4):  # …and jobs are still served
        tokens += submit(i)
    wait_for(lambda: "postponed" in oracle.log(), 30, "the oracle to find the chain gone at an epoch end")
    net.start_chain()

    def client_deposit():
        proc = run_cli("chain", "status", "--json", *chain, home=homes["client"])
        return json.loads(proc.stdout)["deposit_wei"] if proc.returncode == 0 else None

    # Verification waited for the chain too (the draw needs its blocks), then everything settles once.
    wait_for(lambda: client_deposit() == 10**18 - tokens * PRICE, 120, "the postponed settlement")


CRASHING_ORACLE = (sys.executable, "-m", "tests.adversaries.crashing_oracle")  # + where it dies
CRASH_EPOCH_S = 15


@pytest.mark.long
def test_an_oracle_killed_on_either_side_of_sending_a_settlement_charges_every_job_once(chain_network):
    """The oracle dies (like kill -9) twice while settling the same jobs: after recording the
    settlement but before sending it (the restart must forget that record: the chain never booked
    it, and settle those jobs again), then after sending it but before hearing back (the restart
    must keep it: the chain booked it).  The jobs run early in an epoch, so they are verified when
    it is settled: the oracle learns of them from the workers' reports, not from its own store.
    In the end every job is charged exactly once and each worker claims exactly what it earned."""
    net = chain_of_four(chain_network, CRASH_EPOCH_S)
    homes, status = net.homes, net.chain_status

    def start_oracle(*command: str) -> NodeProcess:
        return net.start("oracle", "--no-model", "--oracle", bootstrap="w1", command=command)

    def submit(i) -> int:
        """One job through the oracle's gateway (the two workers verify each other's jobs); its tokens."""
        def attempt():
            out = run_cli("submit", "--node-home", str(homes["oracle"]), f"Count to {i}:", "--max-tokens", "3",
                          "--ttl", "3", "--max-price", str(PRICE), "--json", home=homes["client"])
            if out.returncode == 3 and "(unstaked)" in out.stderr:
                return None  # a restarted gateway has not read the workers' stakes yet
            assert out.returncode == 0, out.stderr
            return len(json.loads(out.stdout)["result"]["output_tokens"])

        return wait_for(attempt, 30, "the gateway to route a job")

    def crashed(oracle, point) -> bool:
        return not oracle.running and f"exiting at {point}" in oracle.log()

    deposit_before = status("client")["deposit_wei"]
    net.start("w1", "--n-ctx", "256")
    net.start("w2", "--n-ctx", "256", bootstrap="w1")
    oracle = start_oracle(*CRASHING_ORACLE, "before_send")
    net.wait_converged("oracle", timeout=45)
    wait_for(lambda: time.time() % CRASH_EPOCH_S < 1, 2 * CRASH_EPOCH_S, "an epoch to begin")
    tokens = submit(0) + submit(1)

    # Recorded, not sent: nothing is booked; the restarted oracle forgets the record and settles again.
    wait_for(lambda: crashed(oracle, "before_send"), 60, "the oracle to die before sending")
    assert not re.search(r"deferred=[1-9]", oracle.log()), \
        "the jobs were not verified by the time their epoch was settled (a slow machine?)"
    assert status("client")["deposit_wei"] == deposit_before
    oracle = start_oracle(*CRASHING_ORACLE, "after_send")
    wait_for(lambda: crashed(oracle, "after_send"), 60, "the restarted oracle to settle the jobs again")

    # Sent, not heard back: the chain booked it; the restarted oracle must not charge those jobs again.
    oracle = start_oracle(*INFERAD)
    tokens += submit(2)
    charged = tokens * PRICE
    wait_for(lambda: status("client")["deposit_wei"] <= deposit_before - charged, 90, "every job to settle")
    settled_through = status("client")["last_settled_epoch"]
    wait_for(lambda: status("client")["last_settled_epoch"] > settled_through, 60, "one more settlement")
    assert status("client")["deposit_wei"] == deposit_before - charged

    # Each worker claims exactly its jobs' charges less the 5 % fee.
    workers_claim_their_jobs_less_the_fee(net, charged, lambda job: job["role"] == "worker" and job["status"] == "done")
