"""A real node process serves real jobs to a real client process."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from inferad.client import LocalNode, model_ref, new_job
from inferad.home import Home
from p2p import wire
from tests.adversaries.held_engine import Gate
from tests.conftest import INFERAD, ROOT, run_cli, run_cli_reporting_imports

pytestmark = [pytest.mark.integration, pytest.mark.model]

PROMPT = "The capital of France is"
HELD_ENGINE = (sys.executable, "-m", "tests.adversaries.held_engine")  # + a gate directory


def direct_greedy_tokens(model_path, prompt: str, max_tokens: int, n_ctx: int) -> list[int]:
    """The baseline: llama-cpp-python alone, greedy, in this process."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, flash_attn=True, verbose=False)
    tokens = []
    for tok in llm.generate(llm.tokenize(prompt.encode(), add_bos=True), temp=0.0, reset=True):
        tokens.append(tok)
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(tokens) >= max_tokens:
            break
    llm.close()
    return tokens


def test_submitted_job_equals_direct_llama_cpp_greedy_run(node, tmp_path, gemma_path):
    proc = run_cli("submit", "--node", node.addr, PROMPT, "--max-tokens", "16", "--json",
                   home=tmp_path / "client", check=True)
    completion = json.loads(proc.stdout)
    result = completion["result"]
    assert result["output_tokens"] == direct_greedy_tokens(gemma_path, PROMPT, 16, n_ctx=512)
    assert result["usage"]["completion_tokens"] == len(result["output_tokens"])
    assert result["worker"] == node.info["peer_id"]
    assert completion["worker_signature_valid"]

    # The result is in the node's LevelDB, and its signature verifies on its own.
    jobs = json.loads(run_cli("jobs", completion["job_id"], "--json", home=node.home, check=True).stdout)
    assert jobs[0]["status"] == "done"
    assert jobs[0]["result"] == result
    assert jobs[0]["result_hash"] == completion["result_hash"]


def test_streamed_text_is_printed_and_signature_checked(node, tmp_path):
    proc = run_cli("submit", "--node-home", str(node.home), "Hello", "--max-tokens", "8",
                   home=tmp_path / "client", check=True)
    assert proc.stdout.strip()
    assert "signature verified" in proc.stderr


def test_submit_through_the_control_socket_is_signed_verified_and_light(node, tmp_path, gemma_path):
    client = Home(tmp_path / "client")
    client.ensure()
    proc, heavy = run_cli_reporting_imports(tmp_path, "submit", "--home", str(client.path), "--node-home",
                                            str(node.home), PROMPT, "--max-tokens", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    assert heavy == []  # neither libp2p nor web3/eth_account nor llama_cpp on this path
    completion = json.loads(proc.stdout)
    assert completion["result"]["output_tokens"] == direct_greedy_tokens(gemma_path, PROMPT, 16, n_ctx=512)
    assert completion["result"]["worker"] == node.info["peer_id"] and completion["worker_signature_valid"]
    stored = json.loads(run_cli("jobs", completion["job_id"], "--json", home=node.home, check=True).stdout)
    assert stored[0]["result_hash"] == completion["result_hash"]

    # The worker-signed bytes themselves, through the client the CLI uses.
    done = LocalNode(node.home / "control.sock", client.client_key).submit(
        new_job(model_ref("gemma-3-270m"), client.eth_address, prompt=PROMPT, max_tokens=4))
    envelope = wire.decode(done.signed_result)  # raises unless the worker's signature verifies
    assert envelope.signer_peer_id == node.info["peer_id"] and envelope.digest == done.result_hash

    rejected = run_cli("submit", "--node-home", str(node.home), "x", "--max-tokens", "100", home=client.path)
    assert rejected.returncode == 3 and "rejected (max_tokens)" in rejected.stderr


def test_a_window_over_the_trained_context_is_refused_at_start(tmp_path):
    proc = run_cli("start", "--listen", "/ip4/127.0.0.1/tcp/0", "--n-ctx", "65536", home=tmp_path / "n")
    assert proc.returncode == 1
    assert "n_ctx 65536 (--n-ctx or engine.n_ctx) is over the model's trained context of 32768 tokens" in proc.stderr


def test_a_node_whose_api_port_is_taken_exits_with_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("start", "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", str(port), home=tmp_path / "n")
    assert proc.returncode == 1, proc.stderr
    assert f"cannot serve the HTTP API on 127.0.0.1:{port}" in proc.stderr
    assert "choose another with --api-port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stored_result_verifies_after_the_node_stops(start_node, tmp_path):
    n = start_node("n1", "--max-tokens", "16", "--n-ctx", "256")
    run_cli("submit", "--node", n.addr, PROMPT, "--max-tokens", "4", home=tmp_path / "c", check=True)
    assert n.stop(signal.SIGTERM) == 0
    assert not (n.home / "node.json").exists()
    jobs = json.loads(run_cli("jobs", "--json", home=n.home, check=True).stdout)
    assert [j["status"] for j in jobs] == ["done"]
    from inferad.store import Store

    with Store(n.home / "db") as store:
        (record,) = list(store.jobs())
        envelope = wire.decode(record.result)
        assert envelope.signer_peer_id == n.info["peer_id"]
        assert envelope.message.job_id == wire.decode(record.job).digest


def test_submit_exit_codes(node, tmp_path):
    client = tmp_path / "client"
    rejected = run_cli("submit", "--node", node.addr, "x", "--max-tokens", "100", home=client)
    assert rejected.returncode == 3
    assert "max_tokens" in rejected.stderr
    dead = node.addr.replace(node.addr.split("/")[4], "1")  # port 1: nobody listens
    unreachable = run_cli("submit", "--node", dead, "x", home=client)
    assert unreachable.returncode == 4
    usage = run_cli("submit", "x", home=client)
    assert usage.returncode == 2


def test_sigterm_lets_the_running_job_finish_then_exits_cleanly(start_node, tmp_path):
    gate = Gate(tmp_path / "gate")
    n = start_node("n1", "--max-tokens", "64", "--n-ctx", "256", command=(*HELD_ENGINE, str(gate.directory)))
    gate.hold(after_tokens=8)
    client = subprocess.Popen([*INFERAD, "submit", "--node", n.addr, "Count to one hundred:", "--max-tokens",
                               "16", "--json", "--home", str(tmp_path / "c")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert gate.wait_held(60) == n.proc.pid  # the job is running: 8 of its 16 tokens out, and held there

    n.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "SIGTERM received: refusing new jobs, finishing 1 running" not in n.log():
        assert time.monotonic() < deadline, n.log()
        time.sleep(0.05)
    assert n.running  # waiting for the job
    gate.release()  # the other 8 tokens: well within the node's grace period (SHUTDOWN_GRACE_S)
    assert n.proc.wait(60) == 0
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert json.loads(out)["result"]["usage"]["completion_tokens"] == 16
    assert [j["status"] for j in json.loads(run_cli("jobs", "--json", home=n.home).stdout)] == ["done"]
