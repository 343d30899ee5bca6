"""Batch-invariant engines (docs/verification.md, "Batch-invariant engines"): a row's logits do not
depend on what shares its batch, so a verifier on the same build checks sampled tokens exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferad.engine import Engine, EngineError
from inferad.models import resolve

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parent.parent
INVARIANT = ROOT / "build" / "llama-invariant"


def test_a_batch_invariant_engine_is_refused_on_a_build_whose_kernels_change_with_the_batch():
    import llama_cpp

    if b"LLAMAFILE = 1" not in llama_cpp.llama_print_system_info():
        pytest.skip("this process's llama.cpp is built without llamafile")
    with pytest.raises(EngineError, match="make llama-invariant"):
        Engine(resolve("gemma-3-270m"), n_ctx=256, n_slots=2, batch_invariant=True)


@pytest.fixture(scope="module")
def seen():
    if not (INVARIANT / "llama_cpp").is_dir():
        pytest.skip("run `make llama-invariant` first (make test does)")
    env = dict(os.environ, PYTHONPATH=str(INVARIANT))
    env.pop("GGML_CPU_TILED_MM", None)
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "batch_invariant_run.py")], env=env,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


def test_sixteen_jobs_decoded_together_give_their_serial_tokens_bit_for_bit(seen):
    assert seen["backend"].startswith("cpu batch-invariant ")
    assert seen["together"] == seen["serial"]


def test_a_verifier_on_the_same_build_sees_the_workers_logits_exactly(seen):
    assert seen["verdicts"] == ["valid"] * 16
    assert seen["misses"] == [0.0] * 16 and seen["ambiguous"] == 0


def test_tokens_from_other_kernels_pass_within_the_noise_but_not_as_the_exact_engines(seen):
    assert seen["stock_claimed_as_stock"] == ["valid"] * 8  # judged with the float-noise tolerance
    assert "invalid" in seen["stock_claimed_as_exact"]  # a claim of the exact engine is checked exactly
