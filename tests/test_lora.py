"""LoRA adapters (issue 15): an adapter made for gemma's shapes with the gguf package, applied by
the engine, served as a (model, adapter) pair by a real node, and verified with the adapter
(drawn verifiers that fetch it: tests/test_model_transfer_integration.py)."""

import json
import os

import pytest

from inferad.engine import Engine
from inferad.models import file_sha256, resolve
from p2p import wire
from tests.conftest import run_cli
from tests.lora import make_adapter

pytestmark = pytest.mark.model
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, gemma_path):
    """(path, sha256) of a LoRA adapter for gemma-3-270m."""
    path = make_adapter(gemma_path, tmp_path_factory.mktemp("lora") / "lora.gguf")
    return path, file_sha256(path)


def test_the_engine_applies_an_adapter_and_its_verifier_needs_the_same_one(adapter):
    from inferad.verification import rescore
    from proofs.check import Thresholds
    from tests.adversaries.forgeries import forged_result
    from tests.factories import WORKER, make_job

    path, _ = adapter
    base = Engine(resolve("gemma-3-270m"), n_ctx=256, n_slots=1)
    tuned = Engine(resolve("gemma-3-270m"), n_ctx=256, n_slots=1, adapter=resolve(str(path)))
    try:
        assert tuned.key == f"{base.ref.sha256}+{tuned.adapter_ref.sha256}"
        params = wire.SamplingParams(max_tokens=8)
        prompt = base.tokenize(PROMPT)
        plain, with_lora = base.generate(prompt, params).tokens, tuned.generate(prompt, params).tokens
        assert plain != with_lora
        job = make_job(PROMPT, max_tokens=8, model=base.ref)
        job_id = wire.digest(wire.unparse(job))
        result = forged_result(tuned, job_id, job, tuned.prompt_tokens(job), with_lora, WORKER)
        assert rescore(tuned, job_id, job, result, Thresholds()).verdict == "valid"
        assert rescore(base, job_id, job, result, Thresholds()).verdict == "invalid"  # the adapter matters
    finally:
        base.close()
        tuned.close()


@pytest.mark.integration
def test_a_node_serves_the_model_and_the_pair_and_routes_by_both(start_node, adapter):
    path, sha = adapter
    node = start_node("node", "--model", "gemma-3-270m", "--adapter", str(path), "--n-ctx", "256")
    served = {(m["sha256"], m["adapter"]) for m in json.loads((node.home / "node.json").read_text())["models"]}
    assert served == {(resolve("gemma-3-270m").sha256, None), (resolve("gemma-3-270m").sha256, sha)}

    def submit(*extra):
        return run_cli("submit", "--node-home", str(node.home), PROMPT, "--max-tokens", "8", "--json", *extra,
                       home=node.home.parent / "client")

    plain, tuned = submit(), submit("--adapter", f"sha256:{sha}")
    assert plain.returncode == 0 and tuned.returncode == 0, tuned.stderr
    assert json.loads(plain.stdout)["result"]["output_tokens"] != json.loads(tuned.stdout)["result"]["output_tokens"]
    unknown = submit("--adapter", "sha256:" + "ab" * 32)
    assert unknown.returncode == 3 and "unknown_model" in unknown.stderr and "adapter" in unknown.stderr


def test_inferad_verify_checks_an_adapter_job_with_that_adapter(adapter, tmp_path):
    import dataclasses
    import subprocess

    from nacl.signing import SigningKey

    from inferad.receipt import make
    from tests.conftest import INFERAD, ROOT
    from tests.factories import make_job

    path, sha = adapter
    client, worker = SigningKey(b"c" * 32), SigningKey(b"w" * 32)
    tuned = Engine(resolve("gemma-3-270m"), n_ctx=256, n_slots=1, adapter=resolve(str(path)))
    try:
        job = dataclasses.replace(make_job(PROMPT, max_tokens=8, model=tuned.ref), adapter=tuned.adapter_ref)
        signed_job = wire.sign(job, client)
        job_id = wire.decode(signed_job).digest
        out = tuned.generate(tuned.prompt_tokens(job), job.params, job_id=job_id)
        result = wire.JobResult(
            job_id=job_id, model=tuned.ref, output_tokens=tuple(out.tokens), text=out.text,
            finish_reason=out.finish_reason, usage=wire.Usage(prompt_tokens=out.prompt_tokens,
                                                              completion_tokens=out.completion_tokens),
            timings=wire.Timings(queue_ms=0, prompt_ms=0, decode_ms=0), engine=tuned.info,
            worker=wire.peer_id_from_public_key(bytes(worker.verify_key)), signed_at=job.created_at + 1)
    finally:
        tuned.close()
    receipt = tmp_path / "receipt.json"
    receipt.write_text(json.dumps(make(signed_job, wire.sign(result, worker)).to_json()))

    def verify(*extra):
        proc = subprocess.run([*INFERAD, "verify", str(receipt), "--json", *extra], capture_output=True, text=True,
                              cwd=ROOT, timeout=300, env={**os.environ, "INFERAD_CACHE": str(tmp_path / "empty-cache")})
        return proc.returncode, json.loads(proc.stdout)

    code, report = verify("--model", str(resolve("gemma-3-270m").path))
    assert code == 3 and "--adapter" in report["reason"]  # the adapter is not on this machine
    code, report = verify("--model", str(resolve("gemma-3-270m").path), "--adapter", str(path))
    assert code == 0 and report["verdict"] == "valid", report
