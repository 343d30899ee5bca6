"""Models travel over the mesh by sha256 (inferad/transfer.py), between real node processes.

A custom model is gemma-3-270m with one byte of its ``general.name`` changed ("Xemma 3 270m"):
the same weights, other bytes, so another sha256 that no catalog knows, labelled ``xemma-3-270m``
from that metadata.  Only node A has it.  Every fetching node
has a cache of its own (``INFERAD_CACHE``), empty at first.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from inferad.models import file_sha256
from tests.chainnet import NEEDS_CHAIN
from tests.conftest import INFERAD, ROOT, run_cli
from tests.lora import make_adapter
from tests.test_mesh_integration import wait_for
from tests.test_model_names_integration import altered_copy

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL_ARGS = ("--n-ctx", "512", "--max-tokens", "16")
LABEL = "xemma-3-270m"
LIAR = (sys.executable, "-m", "tests.adversaries.lying_share", "0")


@pytest.fixture(scope="module")
def custom(tmp_path_factory, gemma_path):
    """(path, sha256) of the custom model."""
    path = altered_copy(gemma_path, tmp_path_factory.mktemp("custom") / "files" / "custom.gguf", b"X")
    return path, file_sha256(path)


def serves(node, sha: str) -> bool:
    return sha in {m["sha256"] for m in json.loads((node.home / "node.json").read_text())["models"]}


def cached(cache_dir, sha: str) -> list[dict]:
    listed = run_cli("models", "list", "--json", env={"INFERAD_CACHE": str(cache_dir)}, check=True)
    return [m for m in json.loads(listed.stdout) if m["sha256"] == sha]


def test_a_node_started_with_a_sha256_it_lacks_fetches_it_from_a_peer_checks_it_and_serves_it(
        start_node, custom, tmp_path):
    path, sha = custom
    a = start_node("a", "--model", str(path), *MODEL_ARGS)
    cache = tmp_path / "cache-b"
    b = start_node("b", "--bootstrap", a.addr, "--model", f"sha256:{sha}", *MODEL_ARGS,
                   env={"INFERAD_CACHE": str(cache)})
    wait_for(lambda: serves(b, sha), 180, "B to fetch the model and serve it")
    fetched = cache / "models" / f"{sha}.gguf"
    assert file_sha256(fetched) == sha and not list((cache / "models").glob("*.partial*"))
    (entry,) = cached(cache, sha)
    assert entry["label"] == LABEL and entry["source"] == a.info["peer_id"]  # A's label, from general.name

    a.stop()  # only B has the model now: the job below is B's
    job = run_cli("submit", "--node-home", str(b.home), "--model", f"{LABEL}@{sha}", "--max-tokens", "4",
                  "The capital of France is", check=True)
    assert job.stdout.strip()
    assert "fetched from peers" in b.log()


def test_a_provider_that_sends_a_bad_chunk_is_dropped_and_the_pull_completes_from_another(
        start_node, custom, tmp_path):
    path, sha = custom
    honest = start_node("honest", "--model", str(path), *MODEL_ARGS)
    liar = start_node("liar", "--bootstrap", honest.addr, "--model", str(path), *MODEL_ARGS, command=LIAR)
    cache = tmp_path / "cache-c"
    c = start_node("c", "--bootstrap", honest.addr, "--no-model", env={"INFERAD_CACHE": str(cache)})
    wait_for(lambda: {honest.info["peer_id"], liar.info["peer_id"]} <= providers(c, sha), 60, "both adverts")

    pull = run_cli("models", "pull", f"sha256:{sha}", home=c.home, env={"INFERAD_CACHE": str(cache)}, timeout=300)
    assert pull.returncode == 0, pull.stderr
    assert file_sha256(cache / "models" / f"{sha}.gguf") == sha
    assert f"dropping provider {liar.info['peer_id']}" in c.log()
    assert "does not match the root" in c.log()
    (entry,) = cached(cache, sha)
    assert entry["source"] == honest.info["peer_id"]  # the file is the honest provider's alone


def test_a_pull_killed_midway_resumes_where_it_stopped(start_node, custom, tmp_path):
    path, sha = custom
    a = start_node("a", "--model", str(path), *MODEL_ARGS)
    cache = tmp_path / "cache-d"
    env = {"INFERAD_CACHE": str(cache)}
    d = start_node("d", "--bootstrap", a.addr, "--no-model", env=env)
    wait_for(lambda: a.info["peer_id"] in providers(d, sha), 60, "A's advert")
    state = cache / "models" / f"{sha}.partial.json"
    pull = subprocess.Popen([*INFERAD, "models", "pull", f"sha256:{sha}", "--home", str(d.home)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    try:
        wait_for(lambda: state.is_file() and json.loads(state.read_text())["done"], 120, "a save of the partial")
        d.stop(signal.SIGKILL)
    finally:
        pull.kill()
        pull.wait()
    kept = len(json.loads(state.read_text())["done"])
    assert kept > 0 and not (cache / "models" / f"{sha}.gguf").exists()

    d = start_node("d", "--bootstrap", a.addr, "--no-model", env=env)
    wait_for(lambda: a.info["peer_id"] in providers(d, sha), 60, "A's advert, after the restart")
    again = run_cli("models", "pull", f"sha256:{sha}", home=d.home, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert file_sha256(cache / "models" / f"{sha}.gguf") == sha and not state.exists()
    assert "resuming" in d.log()


def providers(node, sha: str) -> set[str]:
    proc = run_cli("models", "--json", home=node.home)
    if proc.returncode != 0:
        return set()
    return {p["peer_id"] for m in json.loads(proc.stdout) if m["sha256"] == sha for p in m["providers"]}


@NEEDS_CHAIN
def test_verifiers_drawn_for_a_model_or_adapter_they_lack_fetch_it_and_attest_valid(chain_network, custom, tmp_path):
    """Only w serves the custom model, alone and with a LoRA adapter; v1 and v2 are staked and serve
    gemma-3-270m alone: the draw names them (the gateway is a party to the job), and each fetches
    the model and the adapter into its own cache and re-scores with them."""
    path, sha = custom
    lora = make_adapter(path, tmp_path / "lora" / "lora.gguf")
    names = ("gateway", "v1", "v2", "w")
    net = chain_network(*names, "client")
    net.stake(*names, amount=2)
    net.deposit("client", amount=1)
    caches = {name: str(tmp_path / f"cache-{name}") for name in names}
    net.start("gateway", "--n-ctx", "256", env={"INFERAD_CACHE": caches["gateway"]})
    for name in ("v1", "v2"):
        net.start(name, "--n-ctx", "256", bootstrap="gateway", env={"INFERAD_CACHE": caches[name]})
    net.start("w", "--model", str(path), "--adapter", str(lora), "--n-ctx", "256", bootstrap="gateway",
              env={"INFERAD_CACHE": caches["w"]})
    net.wait_converged(timeout=60)
    wait_for(lambda: all(p["staked"] for p in net.cli_json("peers", home="gateway")), 30, "the gateway to read stakes")

    def verified(*adapter: str) -> list[dict]:
        job = net.cli_json("submit", "--node-home", str(net.homes["gateway"]), "--model", f"{LABEL}@{sha}",
                           *adapter, "Tell me about the sea.", "--max-tokens", "8", "--ttl", "8", "--max-price",
                           "1000", home="client")
        assert job["result"]["worker"] == net.nodes["w"].info["peer_id"]

        def attestations():
            (record,) = [j for j in net.cli_json("jobs", home="gateway") if j["job_id"] == job["job_id"]]
            return (record.get("verification") or {}).get("attestations", [])

        return wait_for(lambda: len(attestations()) >= 2 and attestations(), 180, "two attestations of the job")

    # One job, on the pair: a worker's first job is always drawn (its draw probability starts at 1
    # and falls with each valid attestation), and the verifiers lack both of its files.
    assert {a["verdict"] for a in verified("--adapter", f"sha256:{file_sha256(lora)}")} == {"valid"}
    for name in ("v1", "v2"):
        assert f"verifying on {LABEL} with adapter" in net.nodes[name].log()
        assert file_sha256(Path(caches[name]) / "models" / f"{sha}.gguf") == sha
        assert file_sha256(Path(caches[name]) / "models" / f"{file_sha256(lora)}.gguf") == file_sha256(lora)
