"""Four real node processes form a mesh: adverts, routing, failover, departures, bad peers."""

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, NodeProcess, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL_ARGS = ("--n-ctx", "512", "--max-tokens", "128")


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
def mesh(tmp_path_factory):
    """n1 bootstraps; n2 is a gateway without a model; n3 and n4 serve the model."""
    root = tmp_path_factory.mktemp("mesh")
    nodes = {"n1": NodeProcess(root / "n1", *MODEL_ARGS)}
    boot = nodes["n1"].addr
    nodes["n2"] = NodeProcess(root / "n2", "--bootstrap", boot, "--no-model")
    nodes["n3"] = NodeProcess(root / "n3", "--bootstrap", boot, *MODEL_ARGS)
    nodes["n4"] = NodeProcess(root / "n4", "--bootstrap", boot, *MODEL_ARGS)
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


def test_bad_adverts_are_rejected_and_never_routed_to(mesh, tmp_path):
    rejected_before = status(mesh["n1"])["adverts_rejected"]
    fakes = [subprocess.Popen([sys.executable, "-m", "tests.adversaries.fake_peer", mesh["n1"].addr, mode, "8"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for mode in ("bad_signature", "stale", "oversized", "wrong_schema")]
    try:
        fake_ids = {fake.stdout.readline().split()[1] for fake in fakes}
        time.sleep(5)
        for node in mesh.values():
            assert not peer_ids(node) & fake_ids
        # n1, whom they dialled, rejected them (so never forwarded them to the others).
        assert status(mesh["n1"])["adverts_rejected"] >= rejected_before + 4
        run_cli("submit", "--node-home", str(mesh["n2"].home), "Hi", "--max-tokens", "2",
                home=tmp_path / "client", check=True)
    finally:
        for fake in fakes:
            fake.wait(30)
    assert all(fake.stdout.read().count("EXEC") == 0 for fake in fakes)


def test_a_peer_advertising_a_model_it_does_not_serve_is_backed_off(mesh, tmp_path):
    fake = subprocess.Popen([sys.executable, "-m", "tests.adversaries.fake_peer", mesh["n1"].addr, "false_model",
                             "40"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        fake_id = fake.stdout.readline().split()[1]
        wait_for(lambda: fake_id in peer_ids(mesh["n2"]), 20, "the liar's advert")
        outcomes = []
        for _ in range(10):
            out = run_cli("submit", "--node-home", str(mesh["n2"].home), "Hi", "--max-tokens", "2", "--json",
                          home=tmp_path / "client", check=True)
            completion = json.loads(out.stdout)
            assert completion["result"]["worker"] != fake_id
            (record,) = json.loads(run_cli("jobs", completion["job_id"], "--json", home=mesh["n2"].home).stdout)
            outcomes += [w["outcome"] for w in record["workers"] if w["peer"] == fake_id]
    finally:
        fake.kill()
        fake.wait()
    # Tried at most once (its claim is the fastest, so p2c picks it half the time), then backed off.
    assert len(outcomes) <= 1 and all(o.startswith("unknown_model") for o in outcomes)


def test_worker_killed_midstream_is_continued_by_another(mesh, tmp_path):
    gateway = mesh["n2"]
    client = subprocess.Popen(
        [sys.executable, "-m", "cli", "submit", "--node-home", str(gateway.home), "--home", str(tmp_path / "c"),
         "Write a long story about a dragon.", "--max-tokens", "100", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_worker():
        for name in ("n1", "n3", "n4"):
            jobs = json.loads(run_cli("jobs", "--json", home=mesh[name].home).stdout or "[]")
            if any(j["status"] == "accepted" and j["role"] == "worker" for j in jobs):
                return name
        return None

    victim = wait_for(running_worker, 30, "a worker to start the job")
    time.sleep(0.5)  # a few tokens
    mesh[victim].stop(signal.SIGKILL)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    completion = json.loads(out)
    result = completion["result"]
    victim_id = mesh[victim].info["peer_id"]
    assert result["worker"] != victim_id
    assert 0 < result["continued_from"] < 100 and len(result["output_tokens"]) == 100
    (record,) = json.loads(run_cli("jobs", completion["job_id"], "--json", home=gateway.home, check=True).stdout)
    first, last = record["workers"][0], record["workers"][-1]
    assert first["peer"] == victim_id and first["tokens"] == result["continued_from"]
    assert last["peer"] == result["worker"] and last["outcome"] == "ok"
    assert sum(w["tokens"] for w in record["workers"]) == 100

    # The killed node leaves every peer table within 3 advert periods (plus one for the check).
    for name in ("n1", "n2", "n3", "n4"):
        if name != victim:
            wait_for(lambda name=name: victim_id not in peer_ids(mesh[name]), 10, f"{victim} to leave {name}")
