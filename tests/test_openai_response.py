"""OpenAI's response shapes from signed results and streamed tokens (pure: no node)."""

import dataclasses

from nacl.signing import SigningKey

from inferad.openai_response import Shape, chat_logprobs, completion_logprobs, token_string
from p2p import wire
from tests.factories import make_result


def entry(piece: bytes, logprob: float, *top: tuple[int, bytes, float]) -> wire.TokenLogprob:
    return wire.TokenLogprob(logprob=logprob, piece=piece, top=tuple(wire.TopLogprob(*t) for t in top))


def test_a_token_that_is_part_of_a_character_is_named_by_its_bytes():
    assert token_string(b" caf") == " caf"
    assert token_string("é".encode()[:1]) == "bytes:\\xc3"


def test_chat_logprobs_have_openais_content_shape():
    shaped = chat_logprobs([entry(b" Paris", -0.1, (5, b" Paris", -0.1), (6, b" Lyon", -2.5))])
    assert shaped == {"refusal": None, "content": [{
        "token": " Paris", "logprob": -0.1, "bytes": list(b" Paris"),
        "top_logprobs": [{"token": " Paris", "logprob": -0.1, "bytes": list(b" Paris")},
                         {"token": " Lyon", "logprob": -2.5, "bytes": list(b" Lyon")}]}]}


def test_completion_logprobs_have_the_legacy_shape_with_character_offsets():
    shaped = completion_logprobs([entry(b" a", -1.0, (1, b" a", -1.0)), entry(b"bc", -2.0)], offset=3)
    assert shaped == {"tokens": [" a", "bc"], "token_logprobs": [-1.0, -2.0], "top_logprobs": [{" a": -1.0}, {}],
                      "text_offset": [3, 5]}


def test_the_choices_of_several_prompts_are_numbered_prompt_by_prompt():
    shape = Shape(chat=False, job_ids=["a" * 64, "b" * 64], model="m", n=2)
    second = wire.Choice(output_tokens=(13,), text="<13>", finish_reason="length")
    two = dataclasses.replace(make_result("a" * 64, (11, 12)), choices=(second,), usage=wire.Usage(2, 3))
    envelope = wire.decode(wire.sign(two, SigningKey(b"w" * 32)))
    body = shape.whole([envelope, envelope])
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]][1] == "<13>" and body["usage"]["completion_tokens"] == 6
    tokens = [wire.Token(index=0, id=13, text="x", choice=1), wire.Token(index=0, id=11, text="y")]
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in shape.token_chunks(1, tokens)] == \
        [(3, "x"), (2, "y")]
    assert [c["choices"][0]["finish_reason"] for c in shape.finish_chunks(0, envelope)] == ["length", "length"]
