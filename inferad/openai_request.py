"""OpenAI request bodies -> the jobs they ask for, as pure functions (no I/O, no trio).

Everything a client can get wrong is decided here, before a job is signed or a
stream opened, and raised as an :class:`ApiError`: a 4xx carrying OpenAI's
error object with ``message``, ``type``, ``param`` and ``code`` filled (``param``
is null only when no single field is at fault).  A feature OpenAI has and this
node does not (tools, penalties) is refused with 400 naming the parameter,
never silently ignored.

JSON is parsed by orjson, which refuses nesting deeper than 1024 levels
without recursing on the C stack (a 100,000-deep array from a client must
never reach a recursive parser: see ``chain/ethereum.py`` for why Python's own
recursion limit is no guard here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from p2p import wire

MAX_BODY = 1 << 20  # bytes of one request body
MAX_PROMPTS = 16  # prompts in one /v1/completions request (each its own signed job)
MAX_MESSAGES = 256
DEFAULT_MAX_TOKENS = 256


class ApiError(Exception):
    """A request the API answers with an error: ``status`` and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class CompletionRequest:
    """What one chat or text completion request asks for.

    ``inputs`` holds one job's prompt per choice, as keyword arguments of
    :func:`inferad.client.new_job`: ``{"messages": …}``, ``{"prompt": str}`` or
    ``{"prompt_tokens": tuple}``; a list of prompts gives one choice each.
    """

    model: str
    chat: bool
    inputs: tuple[dict, ...]
    params: wire.SamplingParams
    stream: bool
    include_usage: bool


def parse_json(raw: bytes) -> dict:
    """The JSON object of a request body; 400 for anything else (depth over 1024 included)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def chat_request(body: dict, max_tokens_limit: int) -> CompletionRequest:
    """``POST /v1/chat/completions``."""
    _refuse_unsupported(body, chat=True)
    return _request(body, max_tokens_limit, chat=True, inputs=({"messages": chat_messages(body)},))


def completion_request(body: dict, max_tokens_limit: int) -> CompletionRequest:
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings, a list of token ids
    or a list of such lists (OpenAI's four forms)."""
    _refuse_unsupported(body, chat=False)
    return _request(body, max_tokens_limit, chat=False, inputs=tuple(prompts(body.get("prompt"))))


def _request(body: dict, max_tokens_limit: int, *, chat: bool, inputs: tuple[dict, ...]) -> CompletionRequest:
    model = body.get("model")
    if model is None:
        raise ApiError(400, "'model' is required (see GET /v1/models)", param="model",
                       code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be a non-empty string (see GET /v1/models)", param="model",
                       code="invalid_type")
    stream = _field(body, "stream", bool, False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", param="stream_options")
    if options is not None and (not isinstance(options, dict) or not isinstance(options.get("include_usage", False),
                                                                                 bool)):
        raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                       param="stream_options", code="invalid_type")
    return CompletionRequest(model=model, chat=chat, inputs=inputs, params=sampling(body, max_tokens_limit, chat=chat),
                             stream=stream, include_usage=bool(options and options.get("include_usage")))


# Parameters that change what OpenAI returns, which this node cannot honour yet; each is
# refused when set to anything but its neutral value.  (name, neutral values, what to say)
_UNSUPPORTED: tuple[tuple[str, tuple, str], ...] = (
    ("best_of", (1,), "best_of is not supported"),
    ("echo", (False,), "echo is not supported"),
    ("suffix", ("",), "suffix (insertion) is not supported"),
    ("frequency_penalty", (0,), "frequency_penalty is not supported; leave it at 0"),
    ("presence_penalty", (0,), "presence_penalty is not supported; leave it at 0"),
    ("logit_bias", ({},), "logit_bias is not supported"),
    ("tools", ([],), "tools (function calling) are not supported"),
    ("functions", ([],), "functions (function calling) are not supported"),
)


def _refuse_unsupported(body: dict, *, chat: bool) -> None:
    for name, neutral, why in _UNSUPPORTED:
        value = body.get(name)
        if value is not None and not any(type(value) is type(n) and value == n for n in neutral):
            raise ApiError(400, why, param=name, code="unsupported_parameter")


def _field(body: dict, name: str, kind: type | tuple, default: Any = None, *, lo: float | None = None,
           hi: float | None = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        what = {bool: "a boolean", int: "an integer", str: "a string"}.get(kind, "a number")  # type: ignore[call-overload]
        raise ApiError(400, f"'{name}' must be {what}", param=name, code="invalid_type")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}", param=name)
    return value


def sampling(body: dict, max_tokens_limit: int, *, chat: bool = True) -> wire.SamplingParams:
    """The job's sampling parameters: OpenAI's defaults (temperature 1, top_p 1), and max_tokens 256
    or the node's limit when lower (the protocol's own default is greedy: docs/protocol.md).
    ``n`` choices (1-16) and log-probabilities: chat's ``logprobs: true`` with ``top_logprobs``
    alternatives (0-20), the legacy completions' ``logprobs: k`` (0-20: 0 gives the sampled
    token's only)."""
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or len(stop) > 8 or not all(isinstance(s, str) and 0 < len(s) <= 64
                                                                       for s in stop):
        raise ApiError(400, "'stop' is a string or up to 8 strings of 1-64 characters", param="stop")
    max_tokens = _field(body, "max_completion_tokens", int, None, lo=1, hi=max_tokens_limit)
    max_tokens = _field(body, "max_tokens", int, max_tokens or min(DEFAULT_MAX_TOKENS, max_tokens_limit), lo=1,
                        hi=max_tokens_limit)
    n = _field(body, "n", int, 1, lo=1, hi=wire.MAX_CHOICES)
    grammar = _grammar(body.get("response_format"))
    logprobs = _logprobs(body) if chat else _field(body, "logprobs", int, None, lo=0, hi=wire.MAX_TOP_LOGPROBS)
    try:
        return wire.SamplingParams(
            max_tokens=max_tokens, temperature=float(_field(body, "temperature", (int, float), 1.0, lo=0, hi=2)),
            top_p=float(_field(body, "top_p", (int, float), 1.0, lo=0, hi=1)),
            top_k=_field(body, "top_k", int, 0, lo=0, hi=1000),
            min_p=float(_field(body, "min_p", (int, float), 0.0, lo=0, hi=1)),
            seed=_field(body, "seed", int, 0, lo=0, hi=2**32 - 1),
            stop=tuple(stop), n=n, logprobs=logprobs, grammar=grammar)
    except ValueError as exc:  # the bounds of one job's output (p2p.wire.SamplingParams)
        raise ApiError(400, f"{exc}: lower max_tokens, n or logprobs", param="logprobs" if logprobs else "n") \
            from None


def _grammar(response_format: Any) -> str | None:
    """JSON mode: ``response_format`` as the grammar the job's sampler masks with (None: text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise ApiError(400, "response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                            "{\"type\": \"json_schema\", \"json_schema\": {\"name\": …, \"schema\": {…}}}",
                       param="response_format", code="invalid_value")
    from inferad.grammar import GrammarError, grammar_for

    try:
        return grammar_for(response_format)
    except GrammarError as exc:
        raise ApiError(400, str(exc), param="response_format") from None


def _logprobs(body: dict) -> int | None:
    """Chat: ``logprobs`` (a boolean) turns them on; ``top_logprobs`` asks for alternatives too."""
    on = _field(body, "logprobs", bool, False)
    top = _field(body, "top_logprobs", int, None, lo=0, hi=wire.MAX_TOP_LOGPROBS)
    if top is not None and not on:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if on else None


def chat_messages(body: dict) -> tuple[wire.ChatMessage, ...]:
    """``messages`` as wire chat messages; text content only (a string or text parts)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"'messages' must be a non-empty list of at most {MAX_MESSAGES} messages",
                       param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with a role and content", param=f"messages[{i}]",
                           code="invalid_type")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be system, developer, user or assistant (tool messages "
                                f"are not supported)", param=f"messages[{i}].role")
        out.append(wire.ChatMessage(role=role, content=_content(m.get("content"), f"messages[{i}].content")))
    return tuple(out)


def _content(content: Any, param: str) -> str:
    if isinstance(content, str):
        if len(content) > wire.MAX_PROMPT_CHARS:
            raise ApiError(400, f"{param} is longer than {wire.MAX_PROMPT_CHARS} characters", param=param)
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{param} must be a string or a list of text parts", param=param, code="invalid_type")
    if not content:
        raise ApiError(400, f"{param} is an empty list of parts: send at least one text part", param=param)
    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise ApiError(400, "only text content parts ({\"type\": \"text\", \"text\": …}) are supported", param=param,
                       code="unsupported_value")
    return _content("".join(p["text"] for p in content), param)


def prompts(prompt: Any) -> list[dict]:
    """OpenAI's ``prompt`` forms -> one job input per choice, in order."""
    if isinstance(prompt, str):
        return [{"prompt": _content(prompt, "prompt")}]
    if not isinstance(prompt, list) or not prompt:
        raise ApiError(400, "'prompt' must be a string, a list of strings, a list of token ids or a list of such "
                            "lists", param="prompt", code="invalid_type" if prompt is not None else
                            "missing_required_parameter")
    if all(_is_token(t) for t in prompt):
        return [_token_prompt(prompt, "prompt")]
    if len(prompt) > MAX_PROMPTS:
        raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    out = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            out.append({"prompt": _content(item, f"prompt[{i}]")})
        elif isinstance(item, list) and item and all(_is_token(t) for t in item):
            out.append(_token_prompt(item, f"prompt[{i}]"))
        else:
            raise ApiError(400, f"prompt[{i}] must be a string or a non-empty list of token ids", param="prompt",
                           code="invalid_type")
    return out


def _is_token(value: Any) -> bool:
    return type(value) is int


def _token_prompt(tokens: list[int], param: str) -> dict:
    if len(tokens) > wire.MAX_PROMPT_TOKENS:
        raise ApiError(400, f"{param} has {len(tokens)} tokens, at most {wire.MAX_PROMPT_TOKENS} are allowed",
                       param="prompt")
    bad = next((t for t in tokens if not 0 <= t < 2**31), None)
    if bad is not None:
        raise ApiError(400, f"{param} holds token id {bad}, which no vocabulary has", param="prompt")
    return {"prompt_tokens": tuple(tokens)}
