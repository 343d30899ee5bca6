"""Expiry and advertised limits on a running node (simulated engine: no model needed)."""

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def test_a_result_ready_after_expiry_is_never_signed_and_adverts_carry_the_limits(start_node, tmp_path):
    node = start_node("sim", "--engine", "sim", "--sim-tokens-per-s", "5", "--max-tokens", "40")
    (me,) = [p for p in json.loads(run_cli("peers", "--json", home=node.home, check=True).stdout) if p["self"]]
    assert me["limits"] == {"max_tokens": 40, "max_ttl_s": 600, "clock_skew_s": 60, "max_frame": 1 << 20}

    # 20 tokens at 5 tokens/s take 4 s; the job lives 2 s: the worker finishes after expiry and does not sign.
    late = run_cli("submit", "--node-home", str(node.home), "Hello", "--model", "sim", "--max-tokens", "20",
                   "--ttl", "2", home=tmp_path / "client")
    assert late.returncode == 3 and "rejected (expired)" in late.stderr, late.stderr
    assert "never signed after expiry" in late.stderr
    on_time = run_cli("submit", "--node-home", str(node.home), "Hello", "--model", "sim", "--max-tokens", "2",
                      "--json", home=tmp_path / "client", check=True)
    assert json.loads(on_time.stdout)["result"]["signed_at"] > 0
