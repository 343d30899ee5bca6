"""Punishment cannot be aimed: only the verifiers the draw names count, and the oracle re-checks.

Real nodes and a real chain (anvil).  The adversaries are staked keys whose owners never run a
node: they only sign attestations and gossip them, which is all a colluding verifier needs.
"""

import json

import pytest
import trio

from inferad.home import Home
from p2p import wire
from p2p.mesh import TOPIC_ATTESTATIONS
from proofs.draw import draw_value, named_verifiers
from tests.chainnet import NEEDS_CHAIN, ChainNetwork
from tests.test_hostile_input import gossip
from tests.test_mesh_integration import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.model, NEEDS_CHAIN]
NODES = ("oracle", "worker", "witness")
COLLUDERS = ("c1", "c2")
BYSTANDERS = tuple(f"x{i}" for i in range(6))


class Network(ChainNetwork):
    """The oracle, worker and witness nodes, and the staked keys that run no node, on one chain."""

    def peer(self, name) -> str:
        return wire.peer_id_from_public_key(bytes(Home(self.homes[name]).node_key.verify_key))

    def stake_wei(self, name) -> int:
        return self.chain_status(name)["stake_wei"]

    def submit(self, prompt):
        """A job run by the worker node (the gateway spreads jobs: ask until it ran one itself)."""
        for attempt in range(10):
            job = self.cli_json("submit", "--node-home", str(self.homes["worker"]), f"{prompt} ({attempt})",
                                "--max-tokens", "6", "--ttl", "12", "--max-price", "1000", home="client")
            if job["result"]["worker"] == self.peer("worker"):
                return job
        raise AssertionError("the worker node never ran a job it routed")

    def verification(self, job_id):
        """The job's verification as its gateway (the worker node) holds it."""
        (record,) = self.cli_json("jobs", job_id, home="worker")
        return record.get("verification") or {}

    def attestation(self, signer, job, verdict, beacon_block):
        """``signer``'s signed attestation about ``job`` (a submit --json answer) at ``beacon_block``."""
        from chain.ethereum import HTTPProvider, Web3

        w3 = Web3(HTTPProvider(json.loads(self.chain_json.read_text())["rpc_url"]))
        beacon = bytes(w3.eth.get_block(beacon_block)["hash"])
        body = wire.Attestation(
            job_id=job["job_id"], result_hash=job["result_hash"], worker=job["result"]["worker"],
            model=job["result"]["model"]["sha256"], verdict=verdict, reason="colluding", metrics=wire.VerifyMetrics(),
            beacon_block=beacon_block, beacon=beacon, ts=1)
        return wire.sign(body, Home(self.homes[signer]).node_key), beacon


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("trust"), *NODES, *COLLUDERS, *BYSTANDERS, "client", epoch_seconds=10,
                 oracle="oracle") as net:
        net.stake(*NODES, *COLLUDERS, amount=2)
        net.deposit("client", amount=1)
        net.start("oracle", "--oracle", "--n-ctx", "256")
        for name in NODES[1:]:
            net.start(name, "--n-ctx", "256", bootstrap="oracle")
        net.wait_converged(timeout=60)
        yield net


def test_colluders_cannot_get_an_honest_worker_slashed_and_pay_for_trying(network):
    net = network
    job = net.submit("The capital of France is")
    wait_for(lambda: net.verification(job["job_id"]).get("status") == "valid"
             and "beacon_block" in net.verification(job["job_id"]), 90,
             "the named verifiers (oracle and witness) to attest the honest result valid")
    beacon_block = net.verification(job["job_id"])["beacon_block"]

    # Both colluders are named (6 staked keys, the worker excluded: all 5 are), and they gossip
    # "invalid" at the job's true beacon: a quorum of invalid attestations.
    before = {name: net.stake_wei(name) for name in ("worker", *COLLUDERS)}
    for colluder in COLLUDERS:
        trio.run(gossip, net.nodes["oracle"].addr, TOPIC_ATTESTATIONS,
                 net.attestation(colluder, job, "invalid", beacon_block)[0])
    wait_for(lambda: {a["verifier"] for a in net.verification(job["job_id"]).get("attestations", [])}
             >= {net.peer(c) for c in COLLUDERS}, 30, "the worker to hold the accusations")

    # The oracle re-scores before it slashes: the worker keeps its stake and is paid; the accusers,
    # contradicted by the oracle and by the witness, are slashed as liars.
    wait_for(lambda: all(net.stake_wei(c) < before[c] for c in COLLUDERS), 120,
             "the settlement to slash both accusers")
    assert net.stake_wei("worker") == before["worker"]
    final = net.verification(job["job_id"])
    assert final["status"] == "valid"
    assert net.peer("oracle") in {a["verifier"] for a in final["attestations"] if a["verdict"] == "valid"}
    status = net.chain_status("worker")
    assert not status["slashes"], status


def test_attestations_by_staked_keys_the_draw_does_not_name_are_ignored(network):
    net = network
    net.stake(*BYSTANDERS, amount=2)  # 11 staked keys: the draw names 5 of the 10 that are not the worker
    job = net.submit("Paris is a city in")
    wait_for(lambda: "draw" in net.verification(job["job_id"]), 60, "the job's draw")
    beacon_block = net.verification(job["job_id"])["beacon_block"]
    _, beacon = net.attestation("c1", job, "valid", beacon_block)
    staked = [net.peer(name) for name in (*NODES, *COLLUDERS, *BYSTANDERS)]
    named = named_verifiers(draw_value(job["job_id"], job["result_hash"], beacon), staked, worker=net.peer("worker"))
    extras = (*COLLUDERS, *BYSTANDERS)  # 8 keys that run no node: at least 3 named, at least 3 not
    insider = next(name for name in extras if net.peer(name) in named)
    outsiders = [name for name in extras if net.peer(name) not in named]
    for outsider in outsiders:
        trio.run(gossip, net.nodes["oracle"].addr, TOPIC_ATTESTATIONS,
                 net.attestation(outsider, job, "valid", beacon_block)[0])
    trio.run(gossip, net.nodes["oracle"].addr, TOPIC_ATTESTATIONS, net.attestation(insider, job, "valid",
                                                                                   beacon_block)[0])
    wait_for(lambda: net.peer(insider) in {a["verifier"] for a in
                                           net.verification(job["job_id"]).get("attestations", [])},
             30, "the named insider's attestation (gossip works)")
    held = {a["verifier"] for a in net.verification(job["job_id"]).get("attestations", [])}
    assert not held & {net.peer(o) for o in outsiders}
