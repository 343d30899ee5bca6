"""OpenAI request bodies -> jobs, without sockets: every client mistake is a 4xx naming its parameter."""

import subprocess
import sys

import pytest

from inferad.chat import gemma_turns
from inferad.openai_request import ApiError, chat_request, completion_request, parse_json
from p2p import wire
from tests.conftest import ROOT

USER = [{"role": "user", "content": "Hi"}]


def refusal(parse, body: dict) -> ApiError:
    with pytest.raises(ApiError) as raised:
        parse({"model": "m", **body}, 64)
    error = raised.value
    assert 400 <= error.status < 500 and error.message and error.code and error.type == "invalid_request_error"
    return error


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                                 b'{"model": "m", "prompt": ' + b"[" * 2000 + b"]" * 2000 + b"}"])
def test_json_nested_beyond_1024_levels_is_a_400_not_a_recursion(raw):
    with pytest.raises(ApiError) as raised:
        parse_json(raw)
    assert raised.value.status == 400 and raised.value.code == "invalid_json"


@pytest.mark.parametrize("raw", [b"", b"nope", b"[1, 2]", b'"text"', b'{"a": NaN}'])
def test_a_body_that_is_not_a_json_object_is_a_400(raw):
    with pytest.raises(ApiError):
        parse_json(raw)


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": []}, "messages"),
    ({"messages": USER, "n": 17}, "n"),
    ({"messages": USER, "n": 0}, "n"),
    ({"messages": USER, "logprobs": 1}, "logprobs"),
    ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": USER, "max_tokens": 64, "n": 16, "logprobs": True, "top_logprobs": 20}, "logprobs"),
    ({"messages": USER, "response_format": {"type": "yaml"}}, "response_format"),
    ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"schema": "object"}}},
     "response_format"),
    ({"messages": USER, "response_format": "json"}, "response_format"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": USER, "stream": True, "stream_options": "usage"}, "stream_options"),
    ({"messages": USER, "tools": [{"type": "function"}]}, "tools"),
    ({"messages": USER, "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"messages": USER, "temperature": "hot"}, "temperature"),
    ({"messages": USER, "min_p": 1.5}, "min_p"),
    ({"messages": USER, "max_tokens": 65}, "max_tokens"),
    ({"messages": USER, "stream": "yes"}, "stream"),
])
def test_chat_mistakes_name_their_parameter(body, param):
    assert refusal(chat_request, body).param == param


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, -2]}, "prompt"),
    ({"prompt": ["a", 3]}, "prompt"),
    ({"prompt": ["a"] * 17}, "prompt"),
    ({"prompt": "a", "logprobs": True}, "logprobs"),
    ({"prompt": "a", "logprobs": 21}, "logprobs"),
    ({"prompt": "a", "echo": True}, "echo"),
    ({"prompt": "a", "best_of": 3}, "best_of"),
])
def test_completion_mistakes_name_their_parameter(body, param):
    assert refusal(completion_request, body).param == param


def test_a_missing_model_is_named():
    with pytest.raises(ApiError) as raised:
        chat_request({"messages": USER}, 64)
    assert raised.value.param == "model" and raised.value.code == "missing_required_parameter"


def test_openais_four_prompt_forms_become_one_job_input_per_choice():
    def inputs(prompt):
        return completion_request({"model": "m", "prompt": prompt}, 64).inputs

    assert inputs("a") == ({"prompt": "a"},)
    assert inputs(["a", "b"]) == ({"prompt": "a"}, {"prompt": "b"})
    assert inputs([1, 2, 3]) == ({"prompt_tokens": (1, 2, 3)},)
    assert inputs([[1, 2], [3]]) == ({"prompt_tokens": (1, 2)}, {"prompt_tokens": (3,)})


def test_neutral_values_of_unsupported_parameters_are_accepted():
    request = chat_request({"model": "m", "messages": USER, "n": 1, "logprobs": False, "frequency_penalty": 0,
                            "presence_penalty": 0, "tools": [], "response_format": {"type": "text"},
                            "stream": True, "stream_options": {"include_usage": True}}, 64)
    assert request.stream and request.include_usage and request.params.max_tokens == 64  # the node's limit


def test_the_api_defaults_to_openais_sampling_not_the_protocols_greedy():
    params = chat_request({"model": "m", "messages": USER}, 512).params
    assert params.temperature == 1.0 and params.top_p == 1.0 and params.max_tokens == 256


def test_text_parts_are_joined_and_developer_is_system():
    (messages,) = [i["messages"] for i in chat_request({"model": "m", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, 64).inputs]
    assert messages == (wire.ChatMessage("system", "Be brief."), wire.ChatMessage("user", "ab"))


@pytest.mark.parametrize("chat, turns", [
    ([("user", "Hi")], [("user", "Hi")]),
    ([("system", "S"), ("user", "Hi")], [("user", "S\n\nHi")]),
    ([("system", "S")], [("user", "S")]),
    ([("assistant", "Yes?"), ("user", "Hi")], [("user", ""), ("model", "Yes?"), ("user", "Hi")]),
    ([("system", "S"), ("assistant", "Yes?")], [("user", "S"), ("model", "Yes?")]),
    ([("system", "A"), ("user", "Hi"), ("system", "B")], [("user", "A\n\nB\n\nHi")]),
])
def test_gemma_renders_every_chat_by_the_documented_rules(chat, turns):
    assert gemma_turns([wire.ChatMessage(role, text) for role, text in chat]) == turns


def test_the_ethereum_stack_leaves_pythons_recursion_limit_sane():
    code = ("import sys; import chain.ethereum; import web3, eth_account; "
            "print(sys.getrecursionlimit())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert int(out.stdout) == 1000


def test_n_and_logprobs_become_the_jobs_sampling_parameters():
    chat = chat_request({"model": "m", "messages": USER, "n": 3, "logprobs": True, "top_logprobs": 2}, 64).params
    assert (chat.n, chat.logprobs) == (3, 2)
    assert chat_request({"model": "m", "messages": USER, "logprobs": True}, 64).params.logprobs == 0
    assert chat_request({"model": "m", "messages": USER}, 64).params.logprobs is None
    assert completion_request({"model": "m", "prompt": "a", "logprobs": 0}, 64).params.logprobs == 0


def test_min_p_as_llama_cpp_and_vllm_take_it_becomes_the_jobs():
    assert chat_request({"model": "m", "messages": USER, "min_p": 0.05}, 64).params.min_p == 0.05
    assert completion_request({"model": "m", "prompt": "a"}, 64).params.min_p == 0.0


def test_json_mode_becomes_the_grammar_of_the_signed_job():
    from llama_cpp.llama_grammar import JSON_GBNF

    def grammar(response_format):
        return chat_request({"model": "m", "messages": USER, "response_format": response_format}, 64).params.grammar

    assert grammar({"type": "text"}) is None
    assert grammar({"type": "json_object"}) == JSON_GBNF
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    assert 'city-kv ::= ' in grammar({"type": "json_schema", "json_schema": {"name": "place", "schema": schema}})
