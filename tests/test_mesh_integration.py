"""Four real node processes form a mesh: adverts, routing, failover, departures, bad peers."""

import json
import signal
import subprocess
import sys
import time

import pytest

from inferad.client import LocalNode, model_ref, new_job
from inferad.home import Home
from scheduler.peers import BACKOFF_BASE_S
from tests.adversaries.held_engine import Gate
from tests.conftest import ROOT, NodeProcess, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL_ARGS = ("--n-ctx", "512", "--max-tokens", "128")
HELD_ENGINE = (sys.executable, "-m", "tests.adversaries.held_engine")  # + a gate directory


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def peer_ids(node) -> set[str]:
    proc = run_cli("peers", "--json", home=node.home)
    return {p["peer_id"] for p in json.loads(proc.stdout)} if proc.returncode == 0 else set()


def status(node) -> dict:
    return json.loads(run_cli("status", "--json", home=node.home, check=True).stdout)


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Gate:
    """Holds the engines of n1, n3 and n4 when a test asks (tests/adversaries/held_engine.py)."""
    return Gate(tmp_path_factory.mktemp("gate"))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, gate):
    """n1 bootstraps; n2 is a gateway without a model; n3 and n4 serve the model."""
    root = tmp_path_factory.mktemp("mesh")
    held = (*HELD_ENGINE, str(gate.directory))
    nodes = {"n1": NodeProcess(root / "n1", *MODEL_ARGS, command=held)}
    boot = nodes["n1"].addr
    nodes["n2"] = NodeProcess(root / "n2", "--bootstrap", boot, "--no-model")
    nodes["n3"] = NodeProcess(root / "n3", "--bootstrap", boot, *MODEL_ARGS, command=held)
    nodes["n4"] = NodeProcess(root / "n4", "--bootstrap", boot, *MODEL_ARGS, command=held)
    everyone = {n.info["peer_id"] for n in nodes.values()}
    try:
        for node in nodes.values():
            wait_for(lambda node=node: peer_ids(node) == everyone, 45, f"adverts to converge on {node.home.name}")
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def test_adverts_converge_and_every_node_agrees_on_peers_and_models(mesh):
    everyone = {n.info["peer_id"] for n in mesh.values()}
    serving = {mesh[n].info["peer_id"] for n in ("n1", "n3", "n4")}
    for node in mesh.values():
        peers = json.loads(run_cli("peers", "--json", home=node.home, check=True).stdout)
        assert {p["peer_id"] for p in peers} == everyone
        for p in peers:
            assert p["advert_age_s"] < 6 and p["hardware"]["cores"] >= 1
            assert all(m["tokens_per_s"] > 0 for m in p["models"])
        (model,) = json.loads(run_cli("models", "--json", home=node.home, check=True).stdout)
        assert model["name"] == "gemma-3-270m"
        assert {p["peer_id"] for p in model["providers"]} == serving


def test_job_at_a_modelless_gateway_is_served_by_another_node(mesh, tmp_path):
    gateway = mesh["n2"]
    out = run_cli("submit", "--node-home", str(gateway.home), "The capital of France is", "--max-tokens", "8",
                  "--json", home=tmp_path / "client", check=True)
    completion = json.loads(out.stdout)
    worker = completion["result"]["worker"]
    assert worker in {mesh[n].info["peer_id"] for n in ("n1", "n3", "n4")}
    (record,) = json.loads(run_cli("jobs", completion["job_id"], "--json", home=gateway.home, check=True).stdout)
    assert record["role"] == "gateway" and record["status"] == "done"
    assert record["workers"] == [{"peer": worker, "tokens": 8, "outcome": "ok"}]


BAD_ADVERTS = ("bad_signature", "stale", "oversized", "wrong_schema", "future", "not_an_advert", "relayed")


def test_bad_adverts_are_rejected_counted_and_never_routed_to(mesh, tmp_path):
    """Each kind of bad advert (tests/adversaries/fake_peer.py) is published alone, so n1's
    count of rejections can be checked to grow for every one of them."""
    fakes = {mode: subprocess.Popen([sys.executable, "-m", "tests.adversaries.fake_peer", mesh["n1"].addr, mode, "120",
                                     "gated"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
             for mode in BAD_ADVERTS}
    try:
        fake_ids = {peer for fake in fakes.values() for peer in fake.stdout.readline().split()[1:]}
        for mode, fake in fakes.items():
            rejected_before = status(mesh["n1"])["adverts_rejected"]
            fake.stdin.write("go\n")
            fake.stdin.flush()
            # n1, whom it dialled, rejects its messages (so never forwards them to the others).
            wait_for(lambda before=rejected_before: status(mesh["n1"])["adverts_rejected"] > before, 20,
                     f"n1 to reject and count the {mode} adverts")
            fake.kill()
            fake.wait(30)
        for node in mesh.values():
            assert not peer_ids(node) & fake_ids
        run_cli("submit", "--node-home", str(mesh["n2"].home), "Hi", "--max-tokens", "2",
                home=tmp_path / "client", check=True)
    finally:
        for fake in fakes.values():
            fake.kill()
            fake.wait(30)
    assert all(fake.stdout.read().count("EXEC") == 0 for fake in fakes.values())


def test_a_peer_advertising_a_model_it_does_not_serve_is_tried_once_then_backed_off(mesh, tmp_path):
    asked = tmp_path / "fake.out"  # the fake peer prints READY, then EXEC for every job it is asked to run
    fake = subprocess.Popen([sys.executable, "-m", "tests.adversaries.fake_peer", mesh["n1"].addr, "false_model",
                             "60"], cwd=ROOT, stdout=asked.open("w"), stderr=subprocess.DEVNULL)
    gateway, client = mesh["n2"], Home(tmp_path / "client")
    client.ensure()
    local = LocalNode(gateway.home / "control.sock", client.client_key)
    jobs, tried_in, tried_at = [], None, 0.0  # every job submitted; which one the liar was tried for, when
    try:
        fake_id = wait_for(lambda: (asked.read_text().split() + ["", ""])[1], 20, "the fake peer's READY line")
        wait_for(lambda: fake_id in peer_ids(gateway), 20, "the liar's advert")
        # Its claim is the fastest, so power-of-two-choices picks it about every other job until it
        # fails; then it is backed off for BACKOFF_BASE_S, and the jobs in that time go elsewhere.
        while len(jobs) < 40 and (tried_in is None or time.monotonic() < tried_at + BACKOFF_BASE_S - 1):
            started = time.monotonic()
            done = local.submit(new_job(model_ref("gemma-3-270m"), client.eth_address, prompt="Hi", max_tokens=2))
            assert done.result.worker != fake_id
            jobs.append(done.job_id)
            if tried_in is None and "EXEC" in asked.read_text():
                tried_in, tried_at = len(jobs) - 1, started
    finally:
        fake.kill()
        fake.wait()
    assert tried_in is not None, f"the gateway never tried the liar in {len(jobs)} jobs"
    assert asked.read_text().count("EXEC") == 1
    assert len(jobs) - tried_in - 1 >= 3, "too few jobs within the backoff to tell"
    records = {j["job_id"]: j for j in json.loads(run_cli("jobs", "--json", home=gateway.home, check=True).stdout)}
    attempts = [(i, w["outcome"]) for i, job_id in enumerate(jobs) for w in records[job_id]["workers"]
                if w["peer"] == fake_id]
    assert len(attempts) == 1 and attempts[0][0] == tried_in and attempts[0][1].startswith("unknown_model")


def test_worker_killed_midstream_is_continued_by_another(mesh, gate, tmp_path):
    gateway = mesh["n2"]
    gate.hold(after_tokens=5)
    client = subprocess.Popen(
        [sys.executable, "-m", "cli", "submit", "--node-home", str(gateway.home), "--home", str(tmp_path / "c"),
         "Write a long story about a dragon.", "--max-tokens", "100", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        held_in = gate.wait_held(60)
        victim = next(name for name in ("n1", "n3", "n4") if mesh[name].proc.pid == held_in)
        time.sleep(1)  # its 5 tokens reach the gateway (loopback: milliseconds, whatever the model's speed)
        mesh[victim].stop(signal.SIGKILL)
    finally:
        gate.release()  # the worker that continues goes on
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    completion = json.loads(out)
    result = completion["result"]
    victim_id = mesh[victim].info["peer_id"]
    assert result["worker"] != victim_id
    assert result["continued_from"] == 5 and len(result["output_tokens"]) == 100
    (record,) = json.loads(run_cli("jobs", completion["job_id"], "--json", home=gateway.home, check=True).stdout)
    (killed,) = [w for w in record["workers"] if w["peer"] == victim_id]  # not always the first tried: a
    last = record["workers"][-1]  # peer that left just before (the previous test's fake) may come first
    assert killed["tokens"] == result["continued_from"] and "went away" in killed["outcome"]
    assert last["peer"] == result["worker"] and last["outcome"] == "ok"
    assert sum(w["tokens"] for w in record["workers"]) == 100

    # The killed node leaves every peer table within 3 advert periods (plus one for the check).
    for name in ("n1", "n2", "n3", "n4"):
        if name != victim:
            wait_for(lambda name=name: victim_id not in peer_ids(mesh[name]), 10, f"{victim} to leave {name}")
