"""The llama.cpp engine on the real gemma-3-270m model, and its stop-string logic."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferad.engine import Engine, StopScanner
from inferad.models import resolve
from p2p import wire
from proofs.check import Thresholds, judge


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
                                 lambda token: streamed.append(token) or True)
    assert [t.id for t in streamed] == generation.tokens and [t.index for t in streamed] == list(range(len(streamed)))
    assert "".join(t.text for t in streamed) == generation.text
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
                        wire.SamplingParams(max_tokens=50), lambda token: seen.append(token.id) or len(seen) < 3)
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


@pytest.fixture(scope="module")
def batched():
    engine = Engine(resolve("gemma-3-270m"), n_ctx=256, n_slots=16)
    yield engine
    engine.close()


def side_by_side(calls):
    """Run the blocking ``calls`` in threads at once; their results (or exceptions) in order."""
    import threading

    results = [None] * len(calls)

    def run(i):
        try:
            results[i] = calls[i]()
        except Exception as exc:  # reported to the test as the result
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def parts_at_a_near_tie(engine, prompt, serial, batched_tokens) -> float | None:
    """Where a batched greedy output leaves the serial one: how much likelier (nats) the batched
    token is than the serial one, both re-scored after the same prefix (None: no parting)."""
    at = next((i for i, (a, b) in enumerate(zip(serial, batched_tokens, strict=False)) if a != b), None)
    if at is None:
        return None
    params = wire.SamplingParams(max_tokens=len(serial))
    ours = engine.score(prompt, batched_tokens[: at + 1], params)[at].logprob
    theirs = engine.score(prompt, serial[: at + 1], params)[at].logprob
    return theirs - ours


@pytest.mark.model
def test_sixteen_concurrent_greedy_jobs_equal_their_serial_outputs_but_at_near_ties(batched):
    prompts = [batched.tokenize(f"Write one sentence about the number {i}.") for i in range(16)]
    params = wire.SamplingParams(max_tokens=24)
    serial = [batched.generate(p, params).tokens for p in prompts]
    together = side_by_side([lambda p=p: batched.generate(p, params).tokens for p in prompts])
    gaps = [parts_at_a_near_tie(batched, p, s, t) for p, s, t in zip(prompts, serial, together, strict=True)]
    parted = [g for g in gaps if g is not None]
    print(f"{len(parted)} of 16 batched greedy outputs part from the serial ones; gaps (nats) {parted}")
    assert all(abs(g) < Thresholds().greedy_margin for g in parted), gaps


@pytest.mark.model
def test_a_job_whose_consumer_leaves_mid_batch_frees_its_slot_and_the_others_finish(batched):
    from inferad.engine import GenerationCancelled

    params = wire.SamplingParams(max_tokens=20)
    prompt = batched.tokenize("Count: 1, 2, 3,")
    seen = []
    results = side_by_side(
        [lambda: batched.generate(prompt, params, lambda token: seen.append(token.id) or len(seen) < 3)]
        + [lambda: batched.generate(prompt, params) for _ in range(15)])
    assert isinstance(results[0], GenerationCancelled) and len(seen) == 3
    assert all(len(r.tokens) == 20 for r in results[1:])
    assert not batched._slots.busy()  # every slot is free again, the cancelled one first of all


@pytest.mark.model
def test_a_rescoring_runs_in_the_same_batches_as_generations(batched):
    prompt = batched.tokenize("The capital of France is")
    params = wire.SamplingParams(max_tokens=12)
    alone = batched.generate(prompt, params)
    results = side_by_side([lambda: batched.score(prompt, alone.tokens, params)]
                           + [lambda: batched.generate(prompt, params) for _ in range(4)])
    assert [p.token for p in results[0]] == alone.tokens
    assert all(p.top_logprob - p.logprob < Thresholds().greedy_margin for p in results[0])
    assert all(len(r.tokens) == 12 for r in results[1:])


@pytest.mark.model
def test_a_lone_greedy_job_is_decoded_exactly_as_llama_cpp_python_decodes_it(batched):
    """Seen in benchmarks/overhead.py: a context made with llama.cpp's defaults (flash attention
    on "auto") gave other greedy tokens than llama-cpp-python's Llama from the second token on."""
    import llama_cpp

    llm = llama_cpp.Llama(str(resolve("gemma-3-270m").path), n_ctx=256, flash_attn=True, verbose=False)
    try:
        for prompt in ("Write a long story about a dragon who learns to cook.", "The capital of France is"):
            direct = []
            for tok in llm.generate(llm.tokenize(prompt.encode(), add_bos=True), temp=0.0, top_k=0, top_p=1.0,
                                    min_p=0.0, reset=True):
                direct.append(tok)
                if len(direct) == 12:
                    break
            assert tokens_of(batched, prompt, max_tokens=12).tokens == direct, prompt
    finally:
        llm.close()


@pytest.mark.model
def test_n_choices_share_one_prefill_and_each_draws_with_its_own_public_numbers(batched):
    prompt = batched.tokenize("Once upon a time")
    params = wire.SamplingParams(max_tokens=10, temperature=1.0, seed=7, n=3)
    streamed = []
    three = batched.generate(prompt, params, lambda token: streamed.append(token) or True)
    choices = [(three.tokens, three.text)] + [(list(c.output_tokens), c.text) for c in three.choices]
    assert len(choices) == 3 and three.completion_tokens == sum(len(t) for t, _ in choices)
    for i, (tokens, text) in enumerate(choices):
        assert [t.id for t in streamed if t.choice == i] == tokens
        assert [t.index for t in streamed if t.choice == i] == list(range(len(tokens)))
        assert "".join(t.text for t in streamed if t.choice == i) == text
        # each replays under choice i's draws; the first token exactly (the prompt's logits are shared)
        positions = batched.score(prompt, tokens, params, choice=i)
        assert positions[0].drawn.lo <= positions[0].drawn.u < positions[0].drawn.hi
        assert judge(positions, temperature=1.0).verdict == "valid"
    assert len({tuple(t) for t, _ in choices}) == 3  # three draws, not one copied
    assert batched.generate(prompt, params).choices == three.choices  # reproducible
    assert not batched._slots.busy()


@pytest.mark.model
def test_a_sampled_job_is_a_function_of_its_id_seed_and_model(batched):
    prompt = batched.tokenize("Once upon a time")
    params = wire.SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=1)
    first = batched.generate(prompt, params, job_id="11" * 32).tokens
    assert batched.generate(prompt, params, job_id="11" * 32).tokens == first
    assert batched.generate(prompt, params, job_id="22" * 32).tokens != first


@pytest.mark.model
def test_logprobs_are_the_models_log_softmax_with_the_most_likely_alternatives(batched):
    prompt = batched.tokenize("The capital of France is")
    params = wire.SamplingParams(max_tokens=8, logprobs=3)
    generation = batched.generate(prompt, params)
    rescored = batched.score(prompt, generation.tokens, params)
    assert len(generation.logprobs) == len(generation.tokens) == 8
    # a verifier's one-pass evaluation rounds differently from the decode (0.05 nats seen here)
    margin = Thresholds().logprob_margin
    for tok, entry, position in zip(generation.tokens, generation.logprobs, rescored, strict=True):
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        assert len(entry.top) == 3 and entry.top[0].id == tok and entry.top[0].logprob == entry.logprob  # greedy
        assert entry.piece == batched._piece(tok) and abs(entry.logprob - position.logprob) < margin
        assert sum(math.exp(t.logprob) for t in entry.top) <= 1.0 + 1e-9


@pytest.mark.model
def test_a_continuation_reports_the_logprobs_of_its_prefix_too(batched):
    prompt = batched.tokenize("The capital of France is")
    params = wire.SamplingParams(max_tokens=8, logprobs=1)
    whole = batched.generate(prompt, params)
    continued = batched.generate(prompt, params, prefix=whole.tokens[:3])
    assert continued.tokens == whole.tokens and len(continued.logprobs) == 8
    assert all(abs(a.logprob - b.logprob) < Thresholds().logprob_margin
               for a, b in zip(whole.logprobs, continued.logprobs, strict=True))


@pytest.mark.model
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_json_mode_output_parses_and_follows_the_schema(batched, temperature):
    import json

    from inferad.grammar import grammar_for

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                               "people": {"type": "integer"}},
              "required": ["city", "people"]}  # at most ~80 tokens, so it ends with "stop"
    grammar = grammar_for({"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
    prompt = batched.tokenize("The largest city in France, as JSON:")
    params = wire.SamplingParams(max_tokens=120, temperature=temperature, seed=2, grammar=grammar)
    generation = batched.generate(prompt, params, job_id="0a" * 32)
    assert generation.finish_reason == "stop", generation.text
    value = json.loads(generation.text)
    assert isinstance(value["city"], str) and isinstance(value["people"], int)
