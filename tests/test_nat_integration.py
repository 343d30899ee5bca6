"""Nodes behind NAT (issue 16), in network namespaces (tests/netns.py): a public host, and two homes
each behind a router that masquerades and drops unsolicited inbound connections."""

import contextlib
import json
import signal
import subprocess
import sys

import pytest

from tests.chainnet import NEEDS_CHAIN, ChainNetwork
from tests.conftest import INFERAD, ROOT, NodeProcess, run_cli
from tests.netns import Internet, can_build
from tests.test_mesh_integration import wait_for

pytestmark = pytest.mark.integration
SIM = ("--engine", "sim", "--sim-tokens-per-s", "200")


@pytest.fixture(scope="module")
def internet():
    if (reason := can_build()) is not None:
        pytest.skip(reason)
    net = Internet().build()
    yield net
    net.remove()


def start_in(internet, tmp_path, host: str, *extra: str, name: str | None = None) -> NodeProcess:
    return NodeProcess(tmp_path / (name or host), *SIM, *extra, command=(*internet.exec(host), *INFERAD),
                       listen=f"/ip4/{internet.address(host)}/tcp/0")


@pytest.fixture(scope="module")
def relays(internet, tmp_path_factory):
    """Two nodes on the public host, without a model: they relay for the homes."""
    root = tmp_path_factory.mktemp("relays")
    nodes = [start_in(internet, root, "pub", "--no-model", name=f"relay{i}") for i in (1, 2)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextlib.contextmanager
def two_homes(internet, tmp_path, relays, *extra: str):
    """A worker in home B and a gateway without a model in home A, each behind its router (both
    started with ``extra``), bootstrapped by ``relays``; the worker holds a slot on both relays."""
    nodes = []
    try:
        boot = ("--bootstrap", relays[0].addr, "--bootstrap", relays[1].addr)
        nodes.append(worker := start_in(internet, tmp_path, "hb", *boot, "--sim-tokens-per-s", "100", *extra))
        nodes.append(gateway := start_in(internet, tmp_path, "ha", "--no-model", "--api-port", "0", *boot, *extra))
        wait_for(lambda: len(worker.status().get("relay_addrs", [])) == 2, 90,
                 "the worker behind NAT to reserve a slot on both relays")
        wait_for(lambda: len(gateway.peer(worker.info["peer_id"]).get("addrs", [])) >= 3, 30,
                 "the gateway to hear the worker's relayed addresses")
        yield worker, gateway
    finally:
        for node in nodes:
            node.stop()


def submit(gateway, tmp_path, *args: str) -> dict:
    proc = run_cli("submit", "--node-home", str(gateway.home), "--model", "sim", *args, "--json",
                   home=tmp_path / "client", check=True)
    return json.loads(proc.stdout)


STREAM = """
import json, sys, httpx
url, key, tokens = sys.argv[1:4]
body = {"model": "sim", "prompt": "Hello", "max_tokens": int(tokens), "stream": True}
with httpx.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": "Bearer " + key},
                  timeout=60) as reply:
    reply.raise_for_status()
    print(json.dumps([json.loads(line[6:]) for line in reply.iter_lines() if line.startswith("data: {")]))
"""


def stream_in_home_a(internet, gateway, tokens: int) -> list[dict]:
    """The chunks of a streamed /v1/completions that a client in home A gets from the gateway's API."""
    key = run_cli("apikey", "create", home=gateway.home, check=True).stdout.strip()
    proc = subprocess.run([*internet.exec("ha"), sys.executable, "-c", STREAM, gateway.info["api"], key, str(tokens)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_gateway_in_one_home_streams_a_job_of_a_worker_in_another_and_hole_punching_makes_it_direct(
        internet, relays, tmp_path):
    with two_homes(internet, tmp_path, relays) as (worker, gateway):
        # AutoNAT: the relays are public, the homes private, and adverts say so.
        assert [r.status()["reachability"] for r in relays] == ["public", "public"]
        assert worker.status()["reachability"] == gateway.status()["reachability"] == "private"
        assert gateway.peer(relays[0].info["peer_id"])["reach"] == "public"
        assert gateway.peer(worker.info["peer_id"])["reach"] == "private"

        first = submit(gateway, tmp_path, "Hello", "--max-tokens", "64")
        assert first["result"]["worker"] == worker.info["peer_id"]
        assert first["result"]["usage"]["completion_tokens"] == 64
        print(f"the first job ran {gateway.peer(worker.info['peer_id'])['connection']}")
        wait_for(lambda: gateway.peer(worker.info["peer_id"]).get("connection") == "direct", 60,
                 "hole punching to make the connection direct")
        chunks = stream_in_home_a(internet, gateway, 64)  # an API job, streamed to a client in home A
        ran = gateway.peer(worker.info["peer_id"])["connection"]
        print(f"the second job ran {ran}")
        assert sum(bool(c["choices"][0]["text"]) for c in chunks) > 1
        assert chunks[-1]["choices"][0]["finish_reason"] == "length" and ran == "direct"


def test_a_stream_survives_the_death_of_the_relay_it_runs_through(internet, tmp_path):
    own = [start_in(internet, tmp_path, "pub", "--no-model", name=f"relay{i}") for i in (1, 2)]  # one is killed
    try:
        with two_homes(internet, tmp_path, own, "--no-hole-punching") as (worker, gateway):
            first = worker.status()["relay_addrs"][0]  # the gateway dials the worker's relays in its advert's order
            carrying = next(r for r in own if f"/p2p/{r.info['peer_id']}/p2p-circuit" in first)
            client = subprocess.Popen([*INFERAD, "submit", "--node-home", str(gateway.home), "--model", "sim",
                                       "Hello", "--max-tokens", "600", "--json", "--home", str(tmp_path / "client")],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                wait_for(lambda: worker.status().get("active_jobs") == 1, 30, "the worker to start the job")
                assert gateway.peer(worker.info["peer_id"])["connection"] == "relayed"
                carrying.stop(signal.SIGKILL)
                out, err = client.communicate(timeout=120)
            finally:
                client.kill()
            assert client.returncode == 0, err
            completion = json.loads(out)
            assert completion["result"]["usage"]["completion_tokens"] == 600
            (record,) = json.loads(run_cli("jobs", completion["job_id"], "--json", home=gateway.home,
                                           check=True).stdout)
            print("attempts after the relay died:", record["workers"])
            first, second = record["workers"]  # the same worker, reached through the other relay, continues
            assert first["peer"] == second["peer"] == worker.info["peer_id"] and second["outcome"] == "ok"
            assert first["tokens"] > 0 and first["tokens"] + second["tokens"] == 600
    finally:
        for node in own:
            node.stop()


@pytest.fixture(scope="module")
def wan_host(internet):
    """This machine's address on the namespaces' wan, where the chain listens."""
    return internet.join_from_here()


@pytest.mark.model
@NEEDS_CHAIN
def test_a_drawn_verifier_behind_nat_rescores_a_job_of_a_worker_behind_another_nat(internet, relays, wan_host,
                                                                                   tmp_path):
    """The worker in home B is its own gateway; the only staked node the draw can name is in home A:
    the worker reaches it through a relay (hole punching off) to have its job re-scored."""
    with ChainNetwork(tmp_path, "worker", "verifier", "client", epoch_seconds=10, host=wan_host) as net:
        net.stake("worker", "verifier", amount=2)
        net.deposit("client", amount=1)
        boot = ("--bootstrap", relays[0].addr, "--bootstrap", relays[1].addr)
        for name, host in (("worker", "hb"), ("verifier", "ha")):
            net.start(name, "--n-ctx", "256", "--no-hole-punching", *boot, command=(*internet.exec(host), *INFERAD),
                      listen=f"/ip4/{internet.address(host)}/tcp/0")
        worker, verifier = net.nodes["worker"], net.nodes["verifier"]
        wait_for(lambda: len(verifier.status().get("relay_addrs", [])) == 2, 90,
                 "the verifier behind NAT to reserve a slot on both relays")
        wait_for(lambda: len(worker.peer(verifier.info["peer_id"]).get("addrs", [])) >= 3, 30,
                 "the worker to hear the verifier's relayed addresses")
        for attempt in range(10):  # the worker's gateway spreads jobs: until it ran one itself
            job = net.cli_json("submit", "--node-home", str(worker.home), f"The capital of France is ({attempt})",
                               "--max-tokens", "6", "--ttl", "12", "--max-price", "1000", home="client")
            if job["result"]["worker"] == worker.info["peer_id"]:
                break
        else:
            raise AssertionError("the worker never ran a job it routed")

        def verdicts() -> dict:
            (record,) = net.cli_json("jobs", job["job_id"], home="worker")
            return {a["verifier"]: a["verdict"] for a in (record.get("verification") or {}).get("attestations", [])}

        wait_for(lambda: verdicts().get(verifier.info["peer_id"]) == "valid", 120,
                 "the verifier in home A to attest the job of the worker in home B valid")
        assert worker.peer(verifier.info["peer_id"])["connection"] == "relayed"
