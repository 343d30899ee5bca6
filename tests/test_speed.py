"""The advertised single-stream speed: probed once per hardware, then following the jobs a node runs alone."""

import json

import pytest

from inferad import speed


def test_a_probe_taken_under_load_is_corrected_by_a_few_jobs():
    figure = 1.1  # seen: a probe during a test run read 1.1 tokens/s, alone 45
    for _ in range(5):
        figure = speed.follow(figure, 45.0, tokens=64)
    assert 0.9 * 45.0 <= figure <= 45.0


def test_a_quiet_moment_does_not_stick():
    # seen: a quiet moment cached 73 tokens/s; the same node then streamed 44, and gateways,
    # which hold adverts to 1.5 x what they measure, counted the honest node as an overclaimer
    figure = speed.follow(44.0, 73.0, tokens=64)
    for _ in range(3):
        figure = speed.follow(figure, 44.0, tokens=64)
    assert figure <= 1.1 * 44.0


def test_short_jobs_leave_the_figure_alone_and_small_moves_leave_the_cache_alone():
    assert speed.follow(45.0, 1.1, tokens=8) == 45.0
    assert not speed.moved(47.0, 45.0)
    assert speed.moved(40.0, 45.0)


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
