"""The advertised single-stream speed: probed once per hardware, raised by the jobs a node runs."""

import json

import pytest

from inferad import speed


def test_a_job_that_streamed_faster_than_advertised_raises_the_figure():
    assert speed.faster(45.0, 1.1, tokens=64)  # seen: a probe during a test run read 1.1 tokens/s, alone 45


def test_short_jobs_and_noise_leave_the_figure_alone():
    assert not speed.faster(45.0, 1.1, tokens=8)
    assert not speed.faster(47.0, 45.0, tokens=64)


def test_the_cache_keeps_what_was_remembered_and_ignores_what_is_not_a_speed(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "_path", lambda: tmp_path / "speed.json")
    speed.remember("k", 45.04)

    class Probe:  # an engine that must not be asked: the figure is cached
        kind = "llama.cpp"

        def probed(self, *args, **kwargs):
            raise AssertionError("probed although a figure was cached")

        generate = tokenize = probed

    assert speed.tokens_per_second(Probe(), "k") == 45.0
    for junk in ("45", -3, 0, True):
        (tmp_path / "speed.json").write_text(json.dumps({"k": junk}))
        with pytest.raises(AssertionError, match="probed"):
            speed.tokens_per_second(Probe(), "k")
