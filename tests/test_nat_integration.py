"""Nodes behind NAT (issue 16), in network namespaces (tests/netns.py): a public host, and two homes
each behind a router that masquerades and drops unsolicited inbound connections."""

import contextlib
import json
import signal
import subprocess

import pytest

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


@contextlib.contextmanager
def two_homes(internet, tmp_path, *extra: str):
    """Two relays on the public host; a worker in home B and a gateway without a model in home A, each
    behind its router (both started with ``extra``); the worker has reserved a slot on both relays."""
    relays = [start_in(internet, tmp_path, "pub", "--no-model", name=f"relay{i}") for i in (1, 2)]
    nodes = list(relays)
    try:
        boot = ("--bootstrap", relays[0].addr, "--bootstrap", relays[1].addr)
        worker = start_in(internet, tmp_path, "hb", *boot, "--sim-tokens-per-s", "100", *extra)
        nodes.append(worker)
        gateway = start_in(internet, tmp_path, "ha", "--no-model", *boot, *extra)
        nodes.append(gateway)
        wait_for(lambda: len(status(worker).get("relay_addrs", [])) == 2, 90,
                 "the worker behind NAT to reserve a slot on both relays")
        wait_for(lambda: len(peer_view(gateway, worker.info["peer_id"]).get("addrs", [])) >= 3, 30,
                 "the gateway to hear the worker's relayed addresses")
        yield relays, worker, gateway
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def relayed_only(internet, tmp_path):
    """:func:`two_homes` without hole punching: the gateway reaches the worker through a relay only."""
    with two_homes(internet, tmp_path, "--no-hole-punching") as homes:
        yield homes


def submit(gateway, tmp_path, *args: str) -> dict:
    proc = run_cli("submit", "--node-home", str(gateway.home), "--model", "sim", *args, "--json",
                   home=tmp_path / "client", check=True)
    return json.loads(proc.stdout)


def test_a_gateway_behind_nat_gets_a_job_done_by_a_worker_behind_another_nat_through_a_relay(relayed_only,
                                                                                              tmp_path):
    relays, worker, gateway = relayed_only
    completion = submit(gateway, tmp_path, "Hello", "--max-tokens", "64")
    assert completion["result"]["worker"] == worker.info["peer_id"]
    assert completion["result"]["usage"]["completion_tokens"] == 64
    assert peer_view(gateway, worker.info["peer_id"])["connection"] == "relayed"


def test_hole_punching_makes_the_relayed_connection_between_two_homes_direct(internet, tmp_path):
    with two_homes(internet, tmp_path) as (relays, worker, gateway):
        first = submit(gateway, tmp_path, "Hello", "--max-tokens", "64")
        assert first["result"]["worker"] == worker.info["peer_id"]
        wait_for(lambda: peer_view(gateway, worker.info["peer_id"]).get("connection") == "direct", 60,
                 "hole punching to make the connection direct")
        second = submit(gateway, tmp_path, "Hello again", "--max-tokens", "64")
        ran = peer_view(gateway, worker.info["peer_id"])["connection"]
        print(f"the second job ran {ran}")
        assert second["result"]["usage"]["completion_tokens"] == 64 and ran == "direct"


def test_a_stream_survives_the_death_of_the_relay_it_runs_through(relayed_only, tmp_path):
    relays, worker, gateway = relayed_only
    first = status(worker)["relay_addrs"][0]  # the gateway dials the worker's relays in its advert's order
    carrying = next(r for r in relays if f"/p2p/{r.info['peer_id']}/p2p-circuit" in first)
    client = subprocess.Popen([*INFERAD, "submit", "--node-home", str(gateway.home), "--model", "sim", "Hello",
                               "--max-tokens", "600", "--json", "--home", str(tmp_path / "client")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: status(worker).get("active_jobs") == 1, 30, "the worker to start the job")
        carrying.stop(signal.SIGKILL)
        out, err = client.communicate(timeout=120)
    finally:
        client.kill()
    assert client.returncode == 0, err
    completion = json.loads(out)
    assert completion["result"]["usage"]["completion_tokens"] == 600
    (record,) = json.loads(run_cli("jobs", completion["job_id"], "--json", home=gateway.home, check=True).stdout)
    print("attempts after the relay died:", record["workers"])
    first, second = record["workers"]  # the same worker, reached through the other relay, continues
    assert first["peer"] == second["peer"] == worker.info["peer_id"] and second["outcome"] == "ok"
    assert first["tokens"] > 0 and first["tokens"] + second["tokens"] == 600
