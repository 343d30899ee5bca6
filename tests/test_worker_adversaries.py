"""Workers that lie to the gateway about their exec answer: rejected, failed over, the client served.

Three model nodes for the module: an honest worker and two lying workers
(tests/adversaries/lying_worker.py) that advertise 10,000 tokens/s, so every
gateway tries them both before the honest one.  Each test starts a fresh
gateway without a model (a gateway backs a failed worker off for 15 s, so a
shared one would skip the liars after the first test) and submits one job
whose prompt names the lie; the liars tell it, the gateway must reject each
attempt, and the client must get a signed result that is for its job, names
its model and is exactly what was streamed to it.
"""

import json
import sys

import pytest

from tests.adversaries.lying_worker import DIE_AFTER
from tests.conftest import NodeProcess, run_cli
from tests.factories import GEMMA
from tests.test_mesh_integration import peer_ids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL_ARGS = ("--max-tokens", "16", "--n-ctx", "512")
LIAR = (sys.executable, "-m", "tests.adversaries.lying_worker")
MAX_TOKENS = 8  # per job; DIE_AFTER (3) tokens before a liar goes away


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    root = tmp_path_factory.mktemp("liars")
    # A cache of their own: the honest worker advertises the speed it probes here and now, not a
    # figure some earlier run on a quieter machine left in ~/.cache/inferad/speed.json (the
    # speed test below holds adverts to 1.5 x what the gateway measures).
    env = {"INFERAD_CACHE": str(root / "cache")}
    nodes = {"honest": NodeProcess(root / "honest", *MODEL_ARGS, env=env)}
    try:
        for name in ("liar1", "liar2"):
            nodes[name] = NodeProcess(root / name, "--bootstrap", nodes["honest"].addr, *MODEL_ARGS, command=LIAR,
                                      env=env)
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@pytest.fixture
def gateway(workers, tmp_path):
    node = NodeProcess(tmp_path / "gateway", "--no-model", "--bootstrap", workers["honest"].addr)
    try:
        everyone = {node.info["peer_id"]} | {w.info["peer_id"] for w in workers.values()}
        wait_for(lambda: peer_ids(node) == everyone, 45, "the gateway to see every worker's advert")
        yield node
    finally:
        node.stop()


def submit(gateway, lie: str, client_home) -> tuple[dict, dict]:
    """One job through ``gateway`` with ``inferad submit``, its prompt naming ``lie``: the client's
    completion and the gateway's record of the job.  The client accepts a result only if its
    signature verifies, it is for the job it sent and its tokens and text are what it was streamed."""
    out = run_cli("submit", "--node-home", str(gateway.home), f"{lie}: Tell me about the sea.", "--max-tokens",
                  str(MAX_TOKENS), "--json", home=client_home)
    assert out.returncode == 0, f"the client got no valid result: {out.stderr}\n{gateway.log()[-3000:]}"
    completion = json.loads(out.stdout)
    (record,) = json.loads(run_cli("jobs", completion["job_id"], "--json", home=gateway.home, check=True).stdout)
    return completion, record


def assert_served_honestly(completion, record, workers) -> None:
    result = completion["result"]
    honest = workers["honest"].info["peer_id"]
    assert completion["worker_signature_valid"] and result["worker"] == honest
    assert result["job_id"] == completion["job_id"] == record["job_id"]
    assert result["model"]["sha256"] == record["job"]["model"]["sha256"] == GEMMA.sha256
    assert record["status"] == "done" and record["result"] == result
    streamed_by_honest = len(result["output_tokens"]) - result["continued_from"]
    assert record["workers"][-1] == {"peer": honest, "tokens": streamed_by_honest, "outcome": "ok"}


def liar_attempts(record, workers) -> list[dict]:
    """The gateway's attempts on the two liars; both, since they outrank the honest worker."""
    liars = {workers[name].info["peer_id"] for name in ("liar1", "liar2")}
    attempts = [w for w in record["workers"] if w["peer"] in liars]
    assert len(attempts) == 2, f"the gateway did not try both liars: {record['workers']}"
    return attempts


def assert_both_liars_failed_first(completion, record, workers, because: str) -> None:
    first, second = liar_attempts(record, workers)  # fastest advertised: both liars, then the honest worker
    assert record["workers"][:2] == [first, second]
    assert because in first["outcome"]
    assert first["tokens"] == len(completion["result"]["output_tokens"])  # it streamed it all; the rest continued


def test_a_worker_whose_stream_differs_from_its_signed_result_is_failed_over(workers, gateway, tmp_path):
    completion, record = submit(gateway, "stream_differs", tmp_path / "client")
    assert_served_honestly(completion, record, workers)
    assert_both_liars_failed_first(completion, record, workers, "differs from the streamed tokens")


def test_a_worker_that_signs_its_result_with_another_key_is_failed_over(workers, gateway, tmp_path):
    completion, record = submit(gateway, "other_key", tmp_path / "client")
    assert_served_honestly(completion, record, workers)
    assert_both_liars_failed_first(completion, record, workers, "not signed by the worker asked")


def test_a_worker_whose_result_names_another_job_is_failed_over(workers, gateway, tmp_path):
    completion, record = submit(gateway, "other_job", tmp_path / "client")
    assert_served_honestly(completion, record, workers)
    assert_both_liars_failed_first(completion, record, workers, "for another job")


def test_a_worker_whose_result_names_another_model_is_failed_over(workers, gateway, tmp_path):
    completion, record = submit(gateway, "other_model", tmp_path / "client")
    assert_served_honestly(completion, record, workers)
    assert_both_liars_failed_first(completion, record, workers, "another model")


def test_a_worker_that_claims_the_client_went_away_is_failed_over(workers, gateway, tmp_path):
    completion, record = submit(gateway, "says_cancelled", tmp_path / "client")
    assert_served_honestly(completion, record, workers)
    first, second = liar_attempts(record, workers)
    assert first["tokens"] == second["tokens"] == DIE_AFTER and "cancelled" in first["outcome"]
    assert completion["result"]["continued_from"] == 2 * DIE_AFTER


def test_a_worker_that_ignores_the_continuation_prefix_is_failed_over(workers, gateway, tmp_path):
    completion, record = submit(gateway, "ignores_prefix", tmp_path / "client")
    assert_served_honestly(completion, record, workers)
    died, restarted = liar_attempts(record, workers)  # one went away mid-stream, the other was asked to continue
    assert died["tokens"] == DIE_AFTER and "went away" in died["outcome"]
    assert restarted["tokens"] == 0 and "prefix" in restarted["outcome"]
    result = completion["result"]
    assert result["continued_from"] == DIE_AFTER and len(result["output_tokens"]) == MAX_TOKENS


def test_workers_that_overclaim_their_speed_are_ranked_by_what_the_gateway_measured(workers, gateway, tmp_path):
    """The liars advertise 10,000 tokens/s and stream at this machine's speed: once the gateway has
    seen each stream a job, it ranks them by what it measured, not by their adverts."""
    liars = {workers[name].info["peer_id"] for name in ("liar1", "liar2")}

    def peers():
        return {p["peer_id"]: p for p in json.loads(run_cli("peers", "--json", home=gateway.home, check=True).stdout)}

    ran_on = []
    for i in range(6):  # their adverts win until the gateway has measured each
        out = run_cli("submit", "--node-home", str(gateway.home), f"Count from {i} to fifty:", "--max-tokens", "16",
                      "--json", home=tmp_path / "client", check=True)
        ran_on.append(json.loads(out.stdout)["result"]["worker"])
        if all(peers()[liar]["ranked_by_measurement"] for liar in liars):
            break
    # the first goes to a liar: the scheduler picks the better of two random candidates (power of two
    # choices), and any two hold a liar claiming 10,000 tokens/s; later picks may go either way
    assert ran_on[0] in liars
    peers = peers()
    for liar in liars:
        assert peers[liar]["ranked_by_measurement"] and peers[liar]["overclaims"] >= 1, peers[liar]
        assert peers[liar]["measured_tokens_per_s"] < 1000
    honest = peers[workers["honest"].info["peer_id"]]
    assert not honest["ranked_by_measurement"] and honest["overclaims"] == 0
    assert f"claims {10_000} tokens/s but streamed" in gateway.log()
