"""The OpenAI-compatible HTTP API (DESIGN §10): starlette on hypercorn's trio worker.

Every request made here becomes an ordinary signed job: the node signs it
with its home's client key (and pays from that account's deposit, at the
``--api-max-price`` it names), routes it like any job from the network, and
answers in OpenAI's shapes (SSE when ``stream`` is set).  Each answer carries
an ``inferad`` field (job id, worker, result hash, verification) so a client
can audit it.  Keys are Bearer tokens from ``inferad apikey create``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inferad.admission import JobRejected
from inferad.apikeys import ApiKeyError, ApiKeys
from inferad.client import model_ref, new_job
from inferad.gateway import ClientGone
from inferad.models import ModelError
from p2p import wire

log = logging.getLogger("inferad.api")
MAX_BODY = 1 << 20
KNOWN_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/metrics", "/health")

# Job error codes -> HTTP status and OpenAI error type.
STATUS = {
    "unknown_model": (404, "invalid_request_error"), "max_tokens": (400, "invalid_request_error"),
    "context_overflow": (400, "invalid_request_error"), "unsupported": (400, "invalid_request_error"),
    "insufficient_deposit": (402, "insufficient_quota"), "busy": (429, "rate_limit_error"),
    "no_worker": (503, "service_unavailable"), "unstaked": (503, "service_unavailable"),
    "chain_unavailable": (503, "service_unavailable"), "shutting_down": (503, "service_unavailable"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def rejected(exc: JobRejected) -> ApiError:
    status, type_ = STATUS.get(exc.code, (502, "api_error"))
    return ApiError(status, exc.message, type_=type_, code=exc.code)


# --------------------------------------------------------------------------- request parsing


def _field(body: dict, name: str, kind: type | tuple, default: Any = None, *, lo: float | None = None,
           hi: float | None = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise ApiError(400, f"'{name}' must be {getattr(kind, '__name__', 'a number')}", param=name)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}", param=name)
    return value


def sampling(body: dict, max_tokens_limit: int) -> wire.SamplingParams:
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or len(stop) > 8 or not all(isinstance(s, str) and 0 < len(s) <= 64
                                                                       for s in stop):
        raise ApiError(400, "'stop' is a string or up to 8 strings of 1-64 characters", param="stop")
    max_tokens = _field(body, "max_completion_tokens", int, None, lo=1, hi=max_tokens_limit)
    max_tokens = _field(body, "max_tokens", int, max_tokens or 256, lo=1, hi=max_tokens_limit)
    return wire.SamplingParams(
        max_tokens=max_tokens, temperature=float(_field(body, "temperature", (int, float), 1.0, lo=0, hi=2)),
        top_p=float(_field(body, "top_p", (int, float), 1.0, lo=0, hi=1)),
        top_k=_field(body, "top_k", int, 0, lo=0, hi=1000), seed=_field(body, "seed", int, 0, lo=0, hi=2**32 - 1),
        stop=tuple(stop))


def chat_messages(body: dict) -> tuple[wire.ChatMessage, ...]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > 256:
        raise ApiError(400, "'messages' must be a non-empty list of at most 256 messages", param="messages")
    out = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: only text is supported
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, "only text content parts are supported", param=f"messages[{i}].content")
            content = "".join(p.get("text", "") for p in content)
        role = m.get("role") if isinstance(m, dict) else None
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise ApiError(400, f"messages[{i}] needs a role (system, user, assistant) and text content",
                           param=f"messages[{i}]")
        out.append(wire.ChatMessage(role=role, content=content))
    return tuple(out)


async def json_body(request: Request) -> dict:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


# --------------------------------------------------------------------------- the app


class Api:
    def __init__(self, node: Any, *, max_price: int = 0) -> None:
        self.node = node
        self.keys = ApiKeys(node.home.path / "apikeys.json")
        self.max_price = max_price
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/jobs/{job_id}", self.job, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ])
        self.app.add_exception_handler(ApiError, lambda request, exc: exc.response())
        self.app.add_exception_handler(Exception, self._internal_error)
        self.app.add_exception_handler(404, lambda request, exc: ApiError(404, f"no route {request.url.path}",
                                                                           code="not_found").response())
        self.app.add_exception_handler(405, lambda request, exc: ApiError(
            405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed").response())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "/v1/jobs/{id}" if scope["path"].startswith(
            "/v1/jobs/") else "other"

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                self.node.metrics.api_requests.labels(path, str(message["status"])).inc()
            await send(message)

        if scope["path"] != "/health" and not self._authorized(scope):
            error = ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>' "
                                  "(create one with `inferad apikey create`)", code="invalid_api_key")
            return await error.response()(scope, receive, counted)
        await self.app(scope, receive, counted)

    @staticmethod
    def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("HTTP API error on %s", request.url.path, exc_info=exc)
        return ApiError(500, f"internal error: {type(exc).__name__}; the node's log has the details",
                        type_="api_error", code="internal_error").response()

    def _authorized(self, scope) -> bool:
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = auth.partition(" ")
        try:
            return scheme.lower() == "bearer" and self.keys.check(key.strip()) is not None
        except ApiKeyError as exc:
            log.error("%s", exc)
            return False

    # ------------------------------------------------------------------ endpoints

    async def health(self, request: Request) -> JSONResponse:
        node = self.node
        return JSONResponse({"status": "draining" if node.draining else "ok", "peer_id": node.peer_id,
                             "peers": len(node.peers.fresh(time.monotonic())),
                             "models": [s.engine.ref.name for s in node.served.values()]})

    async def metrics(self, request: Request) -> Response:
        return Response(self.node.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> JSONResponse:
        found = await self.node.control_commands["models"]()
        return JSONResponse({"object": "list", "data": [
            {"id": m["name"], "object": "model", "created": 0, "owned_by": "inferad",
             "inferad": {"sha256": m["sha256"], "providers": len(m["providers"])}} for m in found]})

    async def job(self, request: Request) -> JSONResponse:
        job_id = request.path_params["job_id"]
        if len(job_id) != 64 or any(c not in "0123456789abcdef" for c in job_id):
            raise ApiError(400, "a job id is 64 lowercase hex digits", param="job_id")
        records = await self.node.control_commands["jobs"](job_id)
        if not records:
            raise ApiError(404, f"job {job_id} is not known to this node", code="job_not_found")
        record = records[0]
        settled = await self.node.db(self.node.store.is_settled, job_id)
        record["settlement"] = "settled" if settled else "not settled by this node (the oracle settles)"
        return JSONResponse(record)

    async def chat_completions(self, request: Request) -> Response:
        body = await json_body(request)
        return await self._complete(body, messages=chat_messages(body), chat=True)

    async def completions(self, request: Request) -> Response:
        body = await json_body(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string", param="prompt")
        return await self._complete(body, prompt=prompt, chat=False)

    # ------------------------------------------------------------------ running a job

    def _job(self, body: dict, *, prompt: str | None = None, messages: tuple | None = None) -> tuple[bytes, Any]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' is required (see GET /v1/models)", param="model")
        ref = self._model(name)
        home = self.node.home
        try:
            job = new_job(ref, home.eth_address, prompt=prompt, messages=messages, max_price=self.max_price,
                          ttl_s=min(120, self.node.config.max_job_ttl),
                          **{k: v for k, v in sampling(body, self.node.config.max_tokens).__dict__.items()})
        except (ValueError, wire.WireError) as exc:
            raise ApiError(400, str(exc)) from None
        data = wire.sign(job, home.client_key)
        return data, wire.decode(data)

    def _model(self, name: str) -> wire.ModelRef:
        """A model the network serves (by name or sha256), else one this node knows by catalog name or path."""
        for entry in self.node.peers.fresh(time.monotonic()):
            for offer in entry.advert.models:
                if name in (offer.name, offer.sha256):
                    return wire.ModelRef(sha256=offer.sha256, name=offer.name)
        for served in self.node.served.values():
            if name in (served.engine.ref.name, served.engine.ref.sha256):
                return served.engine.ref
        try:
            return model_ref(name)
        except (ValueError, ModelError) as exc:
            raise ApiError(404, f"model {name!r} is not served in this network ({exc}); see GET /v1/models",
                           code="model_not_found", param="model") from None

    async def _complete(self, body: dict, *, chat: bool, prompt: str | None = None,
                        messages: tuple | None = None) -> Response:
        data, envelope = self._job(body, prompt=prompt, messages=messages)
        stream = _field(body, "stream", bool, False)
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        shape = Shape(chat=chat, job_id=envelope.digest, model=envelope.message.model.name)
        if not stream:
            try:
                routed = await self.node.route_job(envelope, data, _ignore_tokens)
            except JobRejected as exc:
                raise rejected(exc) from None
            return JSONResponse(shape.whole(routed.envelope))
        send, receive = trio.open_memory_channel(math.inf)
        self.node.nursery.start_soon(self._stream_job, envelope, data, send)
        return StreamingResponse(self._sse(shape, receive, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Inferad-Job": envelope.digest})

    async def _stream_job(self, envelope: wire.Envelope, data: bytes, send) -> None:
        """Runs in the node's nursery: the job outlives nothing but its client."""
        async def relay(tokens: list[wire.Token]) -> None:
            try:
                send.send_nowait(("tokens", tokens))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ClientGone() from None

        async with send:
            try:
                routed = await self.node.route_job(envelope, data, relay)
                send.send_nowait(("result", routed.envelope))
            except JobRejected as exc:
                _send_quietly(send, ("error", rejected(exc)))
            except ClientGone:
                pass
            except Exception as exc:  # a bug must not take the node's nursery down
                log.exception("streamed job %s failed", envelope.digest[:16])
                _send_quietly(send, ("error", ApiError(500, f"internal error: {type(exc).__name__}",
                                                       type_="api_error", code="internal_error")))

    async def _sse(self, shape: Shape, receive, include_usage: bool):
        started, first = time.perf_counter(), True
        with receive:
            if shape.chat:
                yield _event(shape.chunk({"role": "assistant", "content": ""}))
            async for kind, item in receive:
                if kind == "tokens":
                    text = "".join(t.text for t in item)
                    if first:
                        self.node.metrics.first_token.observe(time.perf_counter() - started)
                        first = False
                    if text:
                        yield _event(shape.chunk({"content": text} if shape.chat else text))
                elif kind == "error":
                    yield _event(item.body())
                else:
                    result: wire.JobResult = item.message
                    yield _event(shape.chunk({} if shape.chat else "", finish=result.finish_reason, envelope=item))
                    if include_usage:
                        yield _event(shape.usage_chunk(item))
            yield "data: [DONE]\n\n"


async def _ignore_tokens(tokens: list[wire.Token]) -> None:
    return None


def _send_quietly(send, item) -> None:
    try:
        send.send_nowait(item)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class Shape:
    """OpenAI's response objects for one job (chat or text completion)."""

    def __init__(self, *, chat: bool, job_id: str, model: str) -> None:
        self.chat, self.job_id, self.model = chat, job_id, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + job_id[:29]
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _base(self, streaming: bool) -> dict:
        obj = self.object + (".chunk" if streaming and self.chat else "")
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def inferad(self, envelope: wire.Envelope | None) -> dict:
        out: dict[str, Any] = {"job_id": self.job_id, "verification": "pending: drawn after the job expires"}
        if envelope is not None:
            out.update(worker=envelope.message.worker, result_hash=envelope.digest, worker_signature_valid=True)
        return out

    @staticmethod
    def _usage(result: wire.JobResult) -> dict:
        u = result.usage
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens}

    def whole(self, envelope: wire.Envelope) -> dict:
        result: wire.JobResult = envelope.message
        choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        return {**self._base(False), "choices": [choice], "usage": self._usage(result),
                "inferad": self.inferad(envelope)}

    def chunk(self, delta: dict | str, *, finish: str | None = None, envelope: wire.Envelope | None = None) -> dict:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        out = {**self._base(True), "choices": [choice]}
        if envelope is not None:
            out["inferad"] = self.inferad(envelope)
        return out

    def usage_chunk(self, envelope: wire.Envelope) -> dict:
        return {**self._base(True), "choices": [], "usage": self._usage(envelope.message)}


async def serve(api: Api, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; reports the bound URL (``http://host:port``) once listening."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve as hypercorn_serve

    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 64 * 1024  # request line + headers
    await hypercorn_serve(api, config, task_status=_FirstBind(task_status))


class _FirstBind:
    """hypercorn reports a list of bound URLs; the node wants the one."""

    def __init__(self, task_status) -> None:
        self.task_status = task_status

    def started(self, binds=None) -> None:
        self.task_status.started(binds[0] if binds else None)
