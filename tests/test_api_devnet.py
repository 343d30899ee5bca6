"""`inferad devnet up` and the OpenAI-compatible API, with the official openai package."""

import json
import signal
import subprocess
import time

import httpx
import pytest

from chain.devnet import ANVIL
from tests.conftest import INFERAD, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.model,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]


def start_devnet(directory, nodes=3):
    (directory / "devnet.json").unlink(missing_ok=True)
    proc = subprocess.Popen([*INFERAD, "devnet", "up", "--nodes", str(nodes), "--dir", str(directory)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not (directory / "devnet.json").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "devnet did not start in 180 s"
        time.sleep(0.2)
    return proc, json.loads((directory / "devnet.json").read_text())


def stop_devnet(proc):
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    return proc.returncode, out


def leftover_processes(directory) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if str(directory) in line and "devnet up" not in line]


@pytest.fixture(scope="module")
def devnet(tmp_path_factory):
    """A devnet started, stopped and started again in the same directory (the second one is used)."""
    directory = tmp_path_factory.mktemp("devnet")
    first, _ = start_devnet(directory)
    code, out = stop_devnet(first)
    restarts = {"first_exit": code, "first_output": out, "leftovers_after_first": leftover_processes(directory)}
    proc, net = start_devnet(directory)
    yield dict(net, **restarts)
    code, out = stop_devnet(proc)
    assert code == 0 and "no process of this devnet is left" in out, out
    assert leftover_processes(directory) == []


def test_devnet_up_starts_and_stops_cleanly_twice_in_a_row(devnet):
    assert devnet["first_exit"] == 0, devnet["first_output"]
    assert "no process of this devnet is left" in devnet["first_output"]
    assert devnet["leftovers_after_first"] == []
    assert len(devnet["nodes"]) == 3 and devnet["api"].startswith("http://127.0.0.1:")


@pytest.fixture(scope="module")
def openai_client(devnet):
    from openai import OpenAI

    return OpenAI(base_url=devnet["api"], api_key=devnet["api_key"], max_retries=0, timeout=120)


def test_models_lists_every_model_in_the_network(openai_client):
    assert [m.id for m in openai_client.models.list()] == ["gemma-3-270m"]


def test_chat_completion_returns_the_signed_job_and_its_worker(openai_client, devnet):
    reply = openai_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
    info = reply.model_extra["inferad"]
    assert info["worker"] in {n["peer_id"] for n in devnet["nodes"]} and info["worker_signature_valid"]
    job = httpx.get(f"{devnet['api']}/jobs/{info['job_id']}",
                    headers={"Authorization": f"Bearer {devnet['api_key']}"}, timeout=30).json()
    assert job["status"] == "done" and job["result_hash"] == info["result_hash"]


def test_streamed_chat_matches_its_usage_and_ends_with_the_usage_chunk(openai_client):
    chunks = list(openai_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Count to five"}], max_tokens=10,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)
    assert text


def test_completion_with_a_stop_sequence_is_cut_there(openai_client):
    plain = openai_client.completions.create(model="gemma-3-270m", prompt="1, 2, 3, 4,", max_tokens=12,
                                             temperature=0)
    stop = plain.choices[0].text.strip()[:2]
    cut = openai_client.completions.create(model="gemma-3-270m", prompt="1, 2, 3, 4,", max_tokens=12,
                                           temperature=0, stop=[stop])
    assert stop not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("call, status, code", [
    (lambda c: c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]),
     404, "model_not_found"),
    (lambda c: c.chat.completions.create(model="gemma-3-270m", messages=[]), 400, None),
    (lambda c: c.chat.completions.create(model="gemma-3-270m", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=0), 400, None),
    (lambda c: c.chat.completions.create(model="gemma-3-270m", messages=[{"role": "user", "content": "x"}],
                                         temperature=5), 400, None),
    (lambda c: c.completions.create(model="gemma-3-270m", prompt="word " * 3000, max_tokens=8), 400,
     "context_overflow"),
])
def test_errors_come_in_openais_shape_with_the_right_status(openai_client, call, status, code):
    import openai

    with pytest.raises(openai.APIStatusError) as raised:
        call(openai_client)
    assert raised.value.status_code == status
    error = raised.value.body
    assert set(error) >= {"message", "type", "code"} and error["message"]
    if code:
        assert error["code"] == code


def test_a_wrong_api_key_is_refused(devnet):
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=devnet["api"], api_key="ifd_wrong", max_retries=0).models.list()


def test_health_is_open_and_metrics_count_jobs(devnet, openai_client):
    root = devnet["api"].removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=10).json()["status"] == "ok"
    assert httpx.get(f"{root}/metrics", timeout=10).status_code == 401
    metrics = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {devnet['api_key']}"},
                        timeout=10).text
    assert 'inferad_jobs_total{outcome="ok"}' in metrics and "inferad_peers 3.0" in metrics
