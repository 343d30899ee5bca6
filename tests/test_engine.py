"""The llama.cpp engine on the real gemma-3-270m model, and its stop-string logic."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferad.engine import Engine, StopScanner
from inferad.models import resolve
from p2p import wire


def scan(pieces, stops):
    scanner = StopScanner(tuple(stops))
    out = []
    for piece in pieces:
        text, hit = scanner.push(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + scanner.flush(), False


def test_stop_string_split_across_pieces_is_cut_and_never_shown():
    assert scan(["Paris. ", "It is", " END", "ING more"], ["END"]) == ("Paris. It is ", True)


def test_text_that_only_looks_like_a_stop_start_is_released():
    assert scan(["EN", "D", "x"], ["ENDING"]) == ("ENDx", False)


@given(st.lists(st.text(max_size=5), max_size=10), st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_scanned_text_is_the_input_cut_at_the_first_stop(pieces, stops):
    whole = "".join(pieces)
    text, hit = scan(pieces, stops)
    cuts = [whole.find(s) for s in stops if s in whole]
    if hit:
        assert whole.startswith(text) and any(whole[len(text):].startswith(s) for s in stops)
    else:
        assert text == whole and not cuts


@pytest.fixture(scope="module")
def engine():
    engine = Engine(resolve("gemma-3-270m"), n_ctx=256)
    yield engine
    engine.close()


def tokens_of(engine, prompt, **params):
    job_tokens = engine.tokenize(prompt)
    streamed = []
    generation = engine.generate(job_tokens, wire.SamplingParams(**params),
                                 lambda tok, text: streamed.append((tok, text)) or True)
    assert [t for t, _ in streamed] == generation.tokens
    assert "".join(text for _, text in streamed) == generation.text
    return generation


@pytest.mark.model
def test_greedy_generation_is_reproducible(engine):
    a = tokens_of(engine, "The capital of France is", max_tokens=12)
    tokens_of(engine, "Something else entirely", max_tokens=5)  # no state leaks between jobs
    b = tokens_of(engine, "The capital of France is", max_tokens=12)
    assert a.tokens == b.tokens and a.text == b.text
    assert a.finish_reason == "length" and len(a.tokens) == 12


@pytest.mark.model
def test_seeded_sampling_is_reproducible_and_seed_matters(engine):
    runs = [tokens_of(engine, "Once upon a time", max_tokens=12, temperature=1.0, seed=s).tokens
            for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.model
def test_stop_sequence_ends_generation(engine):
    full = tokens_of(engine, "The capital of France is", max_tokens=16)
    stop = full.text.split()[2]
    stopped = tokens_of(engine, "The capital of France is", max_tokens=16, stop=(stop,))
    assert stopped.finish_reason == "stop"
    assert stop not in stopped.text and full.text.startswith(stopped.text)


@pytest.mark.model
def test_generation_stops_when_the_consumer_goes_away(engine):
    from inferad.engine import GenerationCancelled

    seen = []
    with pytest.raises(GenerationCancelled):
        engine.generate(engine.tokenize("Count: 1, 2, 3,"),
                        wire.SamplingParams(max_tokens=50), lambda tok, text: seen.append(tok) or len(seen) < 3)
    assert len(seen) == 3


class HeldEngine:
    """``engine``, each generation held (owning the engine) until ``release`` is set: a test of
    the queue then does not race the model's speed."""

    def __init__(self, engine, release):
        self.engine, self.release = engine, release

    def generate(self, *args, **kwargs):
        assert self.release.wait(30), "the test never released the engine"
        return self.engine.generate(*args, **kwargs)


@pytest.mark.model
def test_worker_refuses_jobs_beyond_its_queue(engine):
    import threading

    import trio

    from inferad.admission import JobRejected
    from inferad.worker import Worker

    release = threading.Event()
    worker = Worker(HeldEngine(engine, release), queue_size=1)
    outcomes = []

    async def job(name):
        async def consume(tokens):
            await trio.sleep(0)
        try:
            await worker.run(engine.tokenize("Hi"), wire.SamplingParams(max_tokens=4), consume)
            outcomes.append((name, "ok"))
        except JobRejected as exc:
            outcomes.append((name, exc.code))

    async def until(condition):
        with trio.fail_after(10):
            while not condition():
                await trio.sleep(0.01)

    async def main():
        async with trio.open_nursery() as nursery:
            try:
                nursery.start_soon(job, "running")
                await until(lambda: worker.load.running == 1)  # it owns the engine, held
                nursery.start_soon(job, "queued")
                await until(lambda: worker.load.queued == 1)
                nursery.start_soon(job, "refused")
                await until(lambda: outcomes)
                assert outcomes == [("refused", "busy")]  # at once, while the other two wait
            finally:
                release.set()

    trio.run(main)
    assert sorted(outcomes) == [("queued", "ok"), ("refused", "busy"), ("running", "ok")]
