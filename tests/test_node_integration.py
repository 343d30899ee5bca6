"""A real node process serves real jobs to a real client process."""

import json
import signal
import subprocess
import time

import pytest

from p2p import wire
from tests.conftest import INFERAD, ROOT, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.model]

PROMPT = "The capital of France is"


def direct_greedy_tokens(model_path, prompt: str, max_tokens: int, n_ctx: int) -> list[int]:
    """The baseline: llama-cpp-python alone, greedy, in this process."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, verbose=False)
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


def test_stored_result_verifies_after_the_node_stops(start_node, tmp_path):
    n = start_node("n1", "--max-tokens", "16", "--n-ctx", "256")
    run_cli("submit", "--node", n.addr, PROMPT, "--max-tokens", "4", home=tmp_path / "c", check=True)
    assert n.stop(signal.SIGTERM) == 0
    assert "Traceback" not in n.log()
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

    n = start_node("n1", "--max-tokens", "64", "--n-ctx", "256")
    client = subprocess.Popen([*INFERAD, "submit", "--node", n.addr, "Count to one hundred:", "--max-tokens",
                               "48", "--json", "--home", str(tmp_path / "c")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while '"accepted"' not in run_cli("jobs", "--json", home=n.home).stdout:  # the job is running
        assert time.monotonic() < deadline and client.poll() is None
        time.sleep(0.05)
    assert n.stop(signal.SIGTERM) == 0
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert json.loads(out)["result"]["usage"]["completion_tokens"] == 48
    assert "Traceback" not in n.log()
    assert [j["status"] for j in json.loads(run_cli("jobs", "--json", home=n.home).stdout)] == ["done"]
