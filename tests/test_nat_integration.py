"""Nodes behind NAT (issue 16), in network namespaces (tests/netns.py): a public host, and two homes
each behind a router that masquerades and drops unsolicited inbound connections."""

import json

import pytest

from tests.conftest import INFERAD, NodeProcess, run_cli
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


def status(node) -> dict:
    proc = run_cli("status", "--json", home=node.home)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def peer_view(node, peer_id: str) -> dict:
    proc = run_cli("peers", "--json", home=node.home)
    return {p["peer_id"]: p for p in json.loads(proc.stdout)}.get(peer_id, {}) if proc.returncode == 0 else {}


def reachability(node) -> str:
    proc = run_cli("status", "--json", home=node.home)
    return json.loads(proc.stdout)["reachability"] if proc.returncode == 0 else "?"


def test_autonat_tells_a_public_node_from_one_behind_nat_and_adverts_say_so(internet, tmp_path):
    public = start_in(internet, tmp_path, "pub")
    nodes = [public]
    try:
        nodes += [start_in(internet, tmp_path, host, "--bootstrap", public.addr) for host in ("ha", "hb")]
        wait_for(lambda: reachability(public) == "public", 60, "the public node to find it is dialable")
        wait_for(lambda: reachability(nodes[1]) == reachability(nodes[2]) == "private", 60,
                 "the nodes behind NAT to find they are not")
        peers = {p["peer_id"]: p for p in json.loads(run_cli("peers", "--json", home=nodes[1].home).stdout)}
        wait_for(lambda: {p["peer_id"]: p.get("reach") for p in json.loads(
            run_cli("peers", "--json", home=nodes[1].home).stdout)}.get(public.info["peer_id"]) == "public",
            30, "home A to hear that the public node is dialable")
        assert public.info["peer_id"] in peers
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def two_homes(internet, tmp_path):
    """Two relays on the public host; a worker in home B and a gateway without a model in home A, each
    behind its router; the worker has reserved a slot on both relays."""
    relays = [start_in(internet, tmp_path, "pub", "--no-model", name=f"relay{i}") for i in (1, 2)]
    nodes = list(relays)
    try:
        boot = ("--bootstrap", relays[0].addr, "--bootstrap", relays[1].addr)
        worker = start_in(internet, tmp_path, "hb", *boot)
        nodes.append(worker)
        gateway = start_in(internet, tmp_path, "ha", "--no-model", *boot)
        nodes.append(gateway)
        wait_for(lambda: len(status(worker).get("relay_addrs", [])) == 2, 90,
                 "the worker behind NAT to reserve a slot on both relays")
        wait_for(lambda: len(peer_view(gateway, worker.info["peer_id"]).get("addrs", [])) >= 3, 30,
                 "the gateway to hear the worker's relayed addresses")
        yield relays, worker, gateway
    finally:
        for node in nodes:
            node.stop()


def submit(gateway, tmp_path, *args: str) -> dict:
    proc = run_cli("submit", "--node-home", str(gateway.home), "--model", "sim", *args, "--json",
                   home=tmp_path / "client", check=True)
    return json.loads(proc.stdout)


def test_a_gateway_behind_nat_gets_a_job_done_by_a_worker_behind_another_nat(two_homes, tmp_path):
    relays, worker, gateway = two_homes
    completion = submit(gateway, tmp_path, "Hello", "--max-tokens", "64")
    assert completion["result"]["worker"] == worker.info["peer_id"]
    assert completion["result"]["usage"]["completion_tokens"] == 64
    connection = peer_view(gateway, worker.info["peer_id"])["connection"]
    print(f"the gateway reached the worker {connection}")
    assert connection in ("relayed", "direct")
