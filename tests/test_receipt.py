"""Receipts: the signed job and result, checked anywhere with `inferad verify`."""

import dataclasses
import json
import subprocess

import pytest
from nacl.signing import SigningKey

from inferad.receipt import ReceiptError, make, parse
from p2p import wire
from tests.conftest import INFERAD, ROOT
from tests.factories import make_job, make_result

CLIENT, WORKER_KEY, OTHER_KEY = SigningKey(b"c" * 32), SigningKey(b"w" * 32), SigningKey(b"o" * 32)


def peer(key: SigningKey) -> str:
    return wire.peer_id_from_public_key(bytes(key.verify_key))


def signed_pair(result_changes=None, key=WORKER_KEY, **job_params):
    job = wire.sign(make_job(**job_params), CLIENT)
    result = dataclasses.replace(make_result(wire.decode(job).digest), worker=peer(key), **(result_changes or {}))
    return job, wire.sign(result, key)


def test_a_receipt_round_trips_through_json():
    job, result = signed_pair()
    receipt = parse(json.loads(json.dumps(make(job, result).to_json())))
    assert receipt.job_bytes == job and receipt.result_bytes == result
    assert receipt.job_id == wire.decode(job).digest and receipt.result.signer_peer_id == peer(WORKER_KEY)


def test_a_result_re_signed_by_another_key_is_refused():
    job, result = signed_pair()
    forged = wire.sign(wire.decode(result).message, OTHER_KEY)  # still names the worker
    with pytest.raises(ReceiptError, match="signed by"):
        make(job, forged)


def test_a_result_for_another_job_and_broken_bytes_are_refused():
    job, _ = signed_pair()
    _, other = signed_pair(prompt="Something else")
    with pytest.raises(ReceiptError, match="answers job"):
        make(job, other)
    document = make(*signed_pair()).to_json()
    with pytest.raises(ReceiptError, match="base64"):
        parse({**document, "result": "%%%"})
    with pytest.raises(ReceiptError, match="does not decode or verify"):
        parse({**document, "job": document["job"][:-8] + "AAAAAAA="})


# --------------------------------------------------------------------------- inferad verify, on the real model

def honest_receipt(engine, tmp_path, **params):
    # a fixed job, so its id and public draws are the same on every run
    job = dataclasses.replace(make_job("Three facts about the moon:", model=engine.ref, **params), nonce=2026,
                              created_at=1_796_083_200_000, expires_at=1_796_083_260_000)
    signed_job = wire.sign(job, CLIENT)
    job_id = wire.decode(signed_job).digest
    generation = engine.generate(engine.prompt_tokens(job), job.params, job_id=job_id)
    result = wire.JobResult(
        job_id=job_id, model=engine.ref, output_tokens=tuple(generation.tokens), text=generation.text,
        finish_reason=generation.finish_reason,
        usage=wire.Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens),
        timings=wire.Timings(queue_ms=0, prompt_ms=0, decode_ms=0), engine=engine.info, worker=peer(WORKER_KEY),
        signed_at=job.created_at + 1)
    return signed_job, result


def verify(tmp_path, job: bytes, result: bytes):
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(make(job, result).to_json()))
    proc = subprocess.run([*INFERAD, "verify", str(path), "--json"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else proc.stderr


@pytest.fixture(scope="module")
def engine():
    from inferad.engine import Engine
    from inferad.models import resolve

    engine = Engine(resolve("gemma-3-270m"), n_ctx=256)
    yield engine
    engine.close()


@pytest.mark.model
def test_inferad_verify_finds_an_honest_sampled_receipt_valid_and_a_doctored_one_invalid(engine, tmp_path):
    job, result = honest_receipt(engine, tmp_path, max_tokens=24, temperature=0.9, seed=4)
    code, report = verify(tmp_path, job, wire.sign(result, WORKER_KEY))
    assert code == 0 and report["verdict"] == "valid", report
    assert len(report["positions"][0]) == 24 and all("u" in row for row in report["positions"][0])

    changed = list(result.output_tokens)
    changed[5] = (changed[5] + 7) % 1000 + 1000
    doctored = dataclasses.replace(result, output_tokens=tuple(changed),
                                   text=engine.replay(changed, wire.decode(job).message.params).text,
                                   worker=peer(OTHER_KEY))  # re-signed, as its own, by another key
    code, report = verify(tmp_path, job, wire.sign(doctored, OTHER_KEY))
    assert code == 1 and report["verdict"] == "invalid", report


@pytest.mark.model
def test_inferad_verify_is_inconclusive_when_the_model_is_not_on_this_machine(engine, tmp_path):
    other_model = wire.ModelRef(sha256="ee" * 32, name="somebody-elses-finetune")
    job = wire.sign(make_job(model=other_model), CLIENT)
    result = dataclasses.replace(make_result(wire.decode(job).digest), model=other_model, worker=peer(WORKER_KEY))
    code, report = verify(tmp_path, job, wire.sign(result, WORKER_KEY))
    assert code == 3 and report["verdict"] == "inconclusive" and "--model" in report["reason"]
