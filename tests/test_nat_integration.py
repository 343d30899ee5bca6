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


def start_in(internet, tmp_path, host: str, *extra: str) -> NodeProcess:
    return NodeProcess(tmp_path / host, *SIM, *extra, command=(*internet.exec(host), *INFERAD),
                       listen=f"/ip4/{internet.address(host)}/tcp/0")


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
