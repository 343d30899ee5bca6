"""`inferad devnet up` and the OpenAI-compatible API, with the official openai package."""

import httpx
import pytest

from chain.devnet import ANVIL

pytestmark = [pytest.mark.integration, pytest.mark.model,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]


def test_devnet_up_starts_and_stops_cleanly_twice_in_a_row(devnet):
    assert devnet["first_exit"] == 0, devnet["first_output"]
    assert "no process of this devnet is left" in devnet["first_output"]
    assert devnet["leftovers_after_first"] == []
    assert len(devnet["nodes"]) == 3 and devnet["api"].startswith("http://127.0.0.1:")


@pytest.fixture(scope="module")
def openai_client(devnet):
    from openai import OpenAI

    return OpenAI(base_url=devnet["api"], api_key=devnet["api_key"], max_retries=0, timeout=120)


def test_models_lists_every_model_in_the_network(openai_client):
    assert [m.id for m in openai_client.models.list()] == ["gemma-3-270m"]


def test_chat_completion_returns_the_signed_job_and_its_worker(openai_client, devnet):
    reply = openai_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == 8 and reply.choices[0].finish_reason == "length"
    info = reply.model_extra["inferad"]
    assert info["worker"] in {n["peer_id"] for n in devnet["nodes"]} and info["worker_signature_valid"]
    job = httpx.get(f"{devnet['api']}/jobs/{info['job_id']}",
                    headers={"Authorization": f"Bearer {devnet['api_key']}"}, timeout=30).json()
    assert job["status"] == "done" and job["result_hash"] == info["result_hash"]


def test_streamed_chat_matches_its_usage_and_ends_with_the_usage_chunk(openai_client):
    chunks = list(openai_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Count to five"}], max_tokens=10,
        temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    assert any(c.choices and c.choices[0].finish_reason == "length" for c in chunks)
    assert text


def test_completion_with_a_stop_sequence_is_cut_there(openai_client):
    plain = openai_client.completions.create(model="gemma-3-270m", prompt="1, 2, 3, 4,", max_tokens=12,
                                             temperature=0)
    stop = plain.choices[0].text.strip()[:2]
    cut = openai_client.completions.create(model="gemma-3-270m", prompt="1, 2, 3, 4,", max_tokens=12,
                                           temperature=0, stop=[stop])
    assert stop not in cut.choices[0].text and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("call, status, code", [
    (lambda c: c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]),
     404, "model_not_found"),
    (lambda c: c.chat.completions.create(model="gemma-3-270m", messages=[]), 400, None),
    (lambda c: c.chat.completions.create(model="gemma-3-270m", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=0), 400, None),
    (lambda c: c.chat.completions.create(model="gemma-3-270m", messages=[{"role": "user", "content": "x"}],
                                         temperature=5), 400, None),
    (lambda c: c.completions.create(model="gemma-3-270m", prompt="word " * 40_000, max_tokens=8), 400,
     "context_overflow"),
])
def test_errors_come_in_openais_shape_with_the_right_status(openai_client, call, status, code):
    import openai

    with pytest.raises(openai.APIStatusError) as raised:
        call(openai_client)
    assert raised.value.status_code == status
    error = raised.value.body
    assert set(error) >= {"message", "type", "code"} and error["message"]
    if code:
        assert error["code"] == code


def test_a_wrong_api_key_is_refused(devnet):
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=devnet["api"], api_key="ifd_wrong", max_retries=0).models.list()


def test_health_is_open_and_metrics_count_jobs(devnet, openai_client):
    root = devnet["api"].removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=10).json()["status"] == "ok"
    assert httpx.get(f"{root}/metrics", timeout=10).status_code == 401
    metrics = httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {devnet['api_key']}"},
                        timeout=10).text
    assert 'inferad_jobs_total{outcome="ok"}' in metrics and "inferad_peers 3.0" in metrics


# --------------------------------------------------------------------------- client mistakes and what clients send

def raw_post(devnet, path: str, body: dict) -> httpx.Response:
    return httpx.post(devnet["api"] + path, json=body, headers={"Authorization": f"Bearer {devnet['api_key']}"},
                      timeout=120)


CHAT = {"model": "gemma-3-270m", "max_tokens": 4, "temperature": 0}
USER = [{"role": "user", "content": "Hi"}]
MISTAKES = {
    "empty_content_parts": ({**CHAT, "messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    "n_above_sixteen": ({**CHAT, "messages": USER, "n": 17}, "n"),
    "n_above_every_workers_slots": ({**CHAT, "messages": USER, "n": 16}, "n"),
    "top_logprobs_without_logprobs": ({**CHAT, "messages": USER, "top_logprobs": 2}, "top_logprobs"),
    "unknown_response_format": ({**CHAT, "messages": USER, "response_format": {"type": "yaml"}}, "response_format"),
    "json_schema_without_a_schema": ({**CHAT, "messages": USER, "response_format": {"type": "json_schema"}},
                                     "response_format"),
    "stream_options_without_stream": ({**CHAT, "messages": USER, "stream_options": {"include_usage": True}},
                                      "stream_options"),
    "tool_role": ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_client_mistakes_are_400_with_openais_whole_error_object(devnet, case):
    body, param = MISTAKES[case]
    reply = raw_post(devnet, "/chat/completions", body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"] and error["code"]


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "You answer in French."}],
    [{"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Yes?"}],
], ids=["system_only", "assistant_first", "system_then_assistant"])
def test_chats_gemma_does_not_foresee_are_served_by_the_documented_rule(devnet, messages):
    reply = raw_post(devnet, "/chat/completions", {**CHAT, "messages": messages})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] == 4


def test_a_streamed_prompt_longer_than_the_context_is_refused_before_the_stream_opens(devnet):
    body = {"model": "gemma-3-270m", "prompt": "word " * 40_000, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", devnet["api"] + "/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {devnet['api_key']}"}) as reply:
        reply.read()
    assert reply.status_code == 400 and reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]["code"] == "context_overflow"


def test_a_list_of_prompts_gives_one_signed_job_and_choice_per_prompt_in_order(devnet):
    reply = raw_post(devnet, "/completions", {"model": "gemma-3-270m", "prompt": ["1, 2, 3,", "a, b, c,"],
                                              "max_tokens": 3, "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    jobs = [c["inferad"]["job_id"] for c in body["choices"]]
    assert len(set(jobs)) == 2 and body["usage"]["completion_tokens"] == 6
    alone = raw_post(devnet, "/completions", {"model": "gemma-3-270m", "prompt": "a, b, c,", "max_tokens": 3,
                                              "temperature": 0}).json()
    assert body["choices"][1]["text"] == alone["choices"][0]["text"]


def test_a_streamed_list_of_prompts_tags_each_chunk_with_its_choice(openai_client):
    chunks = list(openai_client.completions.create(model="gemma-3-270m", prompt=["Hello", "Bye"], max_tokens=3,
                                                   temperature=0, stream=True))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1]


def test_n_choices_are_one_signed_job_with_logprobs_and_usage_counting_every_choice(openai_client):
    reply = openai_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=6, temperature=1,
        seed=3, n=3, logprobs=True, top_logprobs=2)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1  # three draws, not one copied
    assert reply.usage.completion_tokens == sum(len(c.logprobs.content) for c in reply.choices)
    for choice in reply.choices:
        for token in choice.logprobs.content:
            assert token.logprob <= 0 and len(token.top_logprobs) == 2 and bytes(token.bytes).decode(errors="ignore")
            assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs),
                                                                     reverse=True)


def test_streamed_choices_of_several_prompts_are_numbered_prompt_by_prompt_with_their_logprobs(openai_client):
    chunks = list(openai_client.completions.create(model="gemma-3-270m", prompt=["Hello", "Bye"], max_tokens=3,
                                                   temperature=1, n=2, logprobs=1, stream=True))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1, 2, 3]
    logprobs = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert sum(len(lp.tokens) for lp in logprobs) == 12 and all(len(t) == 1 for lp in logprobs for t in lp.top_logprobs)


def test_json_mode_answers_parse_and_their_receipt_checks_out_with_inferad_verify(openai_client, devnet, tmp_path):
    import json
    import subprocess

    from tests.conftest import INFERAD, ROOT

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"]}  # at most ~55 tokens, so it ends with "stop"
    reply = openai_client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "A person, as JSON."}], max_tokens=100,
        temperature=0.7, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    person = json.loads(reply.choices[0].message.content)
    assert isinstance(person["name"], str) and isinstance(person["age"], int)

    job_id = reply.model_extra["inferad"]["job_id"]
    receipt = httpx.get(f"{devnet['api']}/jobs/{job_id}/receipt",
                        headers={"Authorization": f"Bearer {devnet['api_key']}"}, timeout=30)
    assert receipt.status_code == 200, receipt.text
    (tmp_path / "receipt.json").write_text(receipt.text)
    checked = subprocess.run([*INFERAD, "verify", str(tmp_path / "receipt.json"), "--json"], capture_output=True,
                             text=True, timeout=300, cwd=ROOT)
    assert checked.returncode == 0 and json.loads(checked.stdout)["verdict"] == "valid", checked.stdout + checked.stderr


def test_token_id_prompts_are_served_and_ids_outside_the_vocabulary_are_400(devnet):
    text = raw_post(devnet, "/completions", {"model": "gemma-3-270m", "prompt": "1, 2, 3,", "max_tokens": 3,
                                             "temperature": 0}).json()
    ids = raw_post(devnet, "/completions", {"model": "gemma-3-270m", "prompt": [2, 236770, 236764, 236743, 236778],
                                            "max_tokens": 3, "temperature": 0})
    assert ids.status_code == 200, ids.text
    assert ids.json()["usage"]["prompt_tokens"] == 5 and text["usage"]["prompt_tokens"] >= 5
    for prompt in ([5, 10_000_000], [[5, 6], [262_144]]):
        bad = raw_post(devnet, "/completions", {"model": "gemma-3-270m", "prompt": prompt, "max_tokens": 3})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["param"] == "prompt" and "vocabulary" in bad.json()["error"]["message"]
