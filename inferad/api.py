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
from dataclasses import dataclass
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inferad.admission import JobRejected
from inferad.apikeys import ApiKeyError, ApiKeys
from inferad.client import new_job
from inferad.config import Config
from inferad.control import Commands
from inferad.gateway import Admitted, ClientGone, Gateway
from inferad.home import Home
from inferad.metrics import Metrics
from inferad.models import AmbiguousModel, ModelMismatch, UnknownModel, resolve_name
from inferad.openai_request import (
    MAX_BODY,
    ApiError,
    CompletionRequest,
    chat_request,
    completion_request,
    parse_json,
)
from inferad.openai_response import Shape
from p2p import wire
from p2p.host import sole_exception

log = logging.getLogger("inferad.api")
KNOWN_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/metrics", "/health")

# Job error codes -> HTTP status and OpenAI error type.
STATUS = {
    "unknown_model": (404, "invalid_request_error"), "max_tokens": (400, "invalid_request_error"),
    "context_overflow": (400, "invalid_request_error"), "invalid_prompt": (400, "invalid_request_error"),
    "ttl_too_long": (400, "invalid_request_error"), "model_mismatch": (400, "invalid_request_error"),
    "too_many_choices": (400, "invalid_request_error"),
    "insufficient_deposit": (402, "insufficient_quota"), "busy": (429, "rate_limit_error"),
    "no_worker": (503, "service_unavailable"), "unstaked": (503, "service_unavailable"),
    "chain_unavailable": (503, "service_unavailable"), "shutting_down": (503, "service_unavailable"),
}


def rejected(exc: JobRejected) -> ApiError:
    status, type_ = STATUS.get(exc.code, (502, "api_error"))
    param = {"unknown_model": "model", "model_mismatch": "model", "max_tokens": "max_tokens",
             "context_overflow": "messages", "invalid_prompt": "prompt", "too_many_choices": "n"}.get(exc.code)
    return ApiError(status, exc.message, type_=type_, code=exc.code, param=param)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def json_body(request: Request) -> dict:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes", code="request_too_large")
    return parse_json(bytes(raw))


# --------------------------------------------------------------------------- the app


@dataclass(kw_only=True, eq=False)
class Api:
    """The ASGI app. Requests become jobs signed with ``home``'s client key and run by ``gateway``.

    Args:   home: the client key, Ethereum address and API keys (``apikeys.json``) of this home.
            config: max_tokens (the default for a request) and the job TTL bound.
            gateway: admits and routes the jobs.
            commands: the node's ``models``, ``jobs`` and ``status`` views.
            metrics: request counts and time to first token.
            spawn: starts a task in the node's nursery (a streamed job outlives the request handler).
            max_price: wei per token the jobs offer (``--api-max-price``).
    """

    home: Home
    config: Config
    gateway: Gateway
    commands: Commands
    metrics: Metrics
    spawn: Any
    max_price: int = 0

    def __post_init__(self) -> None:
        self.keys = ApiKeys(self.home.path / "apikeys.json")
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/jobs/{job_id}", self.job, methods=["GET"]),
            Route("/v1/jobs/{job_id}/receipt", self.receipt, methods=["GET"]),
            Route("/metrics", self.scrape, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ])
        self.app.add_exception_handler(ApiError, lambda request, exc: error_response(exc))
        self.app.add_exception_handler(Exception, self._internal_error)
        self.app.add_exception_handler(404, lambda request, exc: error_response(
            ApiError(404, f"no route {request.url.path}", code="not_found")))
        self.app.add_exception_handler(405, lambda request, exc: error_response(ApiError(
            405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed")))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path not in KNOWN_PATHS:
            path = ("/v1/jobs/{id}/receipt" if path.endswith("/receipt") else "/v1/jobs/{id}") \
                if path.startswith("/v1/jobs/") else "other"

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.api_requests.labels(path, str(message["status"])).inc()
            await send(message)

        if scope["path"] != "/health" and not self._authorized(scope):
            error = ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>' "
                                  "(create one with `inferad apikey create`)", code="invalid_api_key")
            return await error_response(error)(scope, receive, counted)
        await self.app(scope, receive, counted)

    @staticmethod
    def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("HTTP API error on %s", request.url.path, exc_info=exc)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}; the node's log has the details",
                                       type_="api_error", code="internal_error"))

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
        return JSONResponse(self.commands.health())

    async def scrape(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def models(self, request: Request) -> JSONResponse:
        """One entry per file (sha256) on offer; its ``id`` is what to send as ``model`` (models.name_models)."""
        found = await self.commands.models()
        return JSONResponse({"object": "list", "data": [
            {"id": m["id"], "object": "model", "created": 0, "owned_by": "inferad",
             "inferad": {"sha256": m["sha256"], "label": m["name"], "providers": len(m["providers"])}}
            for m in found]})

    async def job(self, request: Request) -> JSONResponse:
        job_id = _job_id(request)
        records = await self.commands.jobs(job_id)
        if not records:
            raise ApiError(404, f"job {job_id} is not known to this node", code="job_not_found")
        record = records[0]
        settled = await self.commands.is_settled(job_id)
        record["settlement"] = "settled" if settled else "not settled by this node (the oracle settles)"
        return JSONResponse(record)

    async def receipt(self, request: Request) -> JSONResponse:
        """The signed job and its signed result, self-contained: ``inferad verify`` checks it anywhere."""
        job_id = _job_id(request)
        receipt = await self.commands.receipt(job_id)
        if receipt is None:
            raise ApiError(404, f"job {job_id} has no result on this node (unknown, running or failed)",
                           code="job_not_found")
        return JSONResponse(receipt)

    async def chat_completions(self, request: Request) -> Response:
        body = await json_body(request)
        return await self._complete(chat_request(body, self.config.max_tokens))

    async def completions(self, request: Request) -> Response:
        body = await json_body(request)
        return await self._complete(completion_request(body, self.config.max_tokens))

    # ------------------------------------------------------------------ running a job

    def _sign(self, ref: wire.ModelRef, request: CompletionRequest, job_input: dict) -> tuple[bytes, wire.Envelope]:
        """One choice's job, signed with the home's client key: (its bytes, its envelope)."""
        home = self.home
        try:
            job = new_job(ref, home.eth_address, max_price=self.max_price, ttl_s=min(120, self.config.max_job_ttl),
                          **job_input, **request.params.__dict__)
        except (ValueError, wire.WireError) as exc:
            raise ApiError(400, str(exc)) from None
        data = wire.sign(job, home.client_key)
        return data, wire.decode(data)

    def _model(self, name: str) -> wire.ModelRef:
        """The model a request names: models.resolve_name over what the network and this node offer.

        A catalog name means its pinned sha256 only; ``label@sha256`` and a bare
        sha256 always work; another label works while one file carries it.
        Raises ApiError: 404 ``model_not_found`` (a label nobody offers), 400
        ``ambiguous_model`` (the message lists each ``label@sha256``) or 400
        ``model_mismatch`` (a catalog name with another sha256).
        """
        try:
            named = resolve_name(name, self.commands.offers())
        except UnknownModel as exc:
            raise ApiError(404, str(exc), code="model_not_found", param="model") from None
        except AmbiguousModel as exc:
            raise ApiError(400, str(exc), code="ambiguous_model", param="model") from None
        except ModelMismatch as exc:
            raise ApiError(400, str(exc), code="model_mismatch", param="model") from None
        try:
            return wire.parse(wire.ModelRef, {"sha256": named.sha256, "name": named.label})
        except wire.WireError as exc:  # a label over 128 characters
            raise ApiError(400, f"'model': {exc}", param="model") from None

    async def _complete(self, request: CompletionRequest) -> Response:
        """Admit every choice's job (all refusals are 4xx/5xx here, before a stream opens), then run them."""
        ref = self._model(request.model)
        jobs = [self._sign(ref, request, job_input) for job_input in request.inputs]
        admitted: list[Admitted] = []
        try:
            for data, envelope in jobs:
                admitted.append(await self.gateway.admit(envelope, data))
        except JobRejected as exc:
            for job in admitted:
                await self.gateway.abandon(job, "abandoned")
            raise rejected(exc) from None
        shape = Shape(chat=request.chat, job_ids=[envelope.digest for _, envelope in jobs], model=ref.name,
                      n=request.params.n, logprobs=request.params.logprobs is not None)
        if not request.stream:
            return JSONResponse(shape.whole(await self._run_all(admitted)))
        send, receive = trio.open_memory_channel(math.inf)
        async with send:
            for index, job in enumerate(admitted):
                self.spawn(self._stream_job, job, index, send.clone())
        return StreamingResponse(self._sse(shape, receive, request.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Inferad-Job": shape.job_ids[0]})

    async def _run_all(self, admitted: list[Admitted]) -> list[wire.Envelope]:
        """Run admitted jobs side by side; their signed results in order, or the first refusal."""
        results: list[wire.Envelope | None] = [None] * len(admitted)
        refusals: list[JobRejected] = []

        async def run(index: int, job: Admitted) -> None:
            try:
                results[index] = (await self.gateway.run_admitted(job, _ignore_tokens)).envelope
            except JobRejected as exc:
                refusals.append(exc)

        async with trio.open_nursery() as nursery:
            for index, job in enumerate(admitted):
                nursery.start_soon(run, index, job)
        if refusals:
            raise rejected(refusals[0])
        return results  # type: ignore[return-value]

    async def _stream_job(self, admitted: Admitted, index: int, send) -> None:
        """Runs in the node's nursery: the job outlives nothing but its client."""
        async def relay(tokens: list[wire.Token]) -> None:
            try:
                send.send_nowait(("tokens", index, tokens))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ClientGone() from None

        async with send:
            try:
                routed = await self.gateway.run_admitted(admitted, relay)
                send.send_nowait(("result", index, routed.envelope))
            except JobRejected as exc:
                _send_quietly(send, ("error", index, rejected(exc)))
            except ClientGone:
                pass
            except Exception as exc:  # a bug must not take the node's nursery down
                log.exception("streamed job %s failed", admitted.envelope.digest[:16])
                _send_quietly(send, ("error", index, ApiError(500, f"internal error: {type(exc).__name__}",
                                                              type_="api_error", code="internal_error")))

    async def _sse(self, shape: Shape, receive, include_usage: bool):
        """Server-sent events: chunks tagged with their choice's index, each choice's finish, usage, [DONE]."""
        started, first = time.perf_counter(), True
        results: list[wire.Envelope] = []
        with receive:
            for chunk in shape.opening_chunks():
                yield _event(chunk)
            async for kind, job, item in receive:
                if kind == "tokens":
                    if first:
                        self.metrics.first_token.observe(time.perf_counter() - started)
                        first = False
                    for chunk in shape.token_chunks(job, item):
                        yield _event(chunk)
                elif kind == "error":
                    yield _event(item.body())
                else:
                    results.append(item)
                    for chunk in shape.finish_chunks(job, item):
                        yield _event(chunk)
            if include_usage and results:
                yield _event(shape.usage_chunk(results))
            yield "data: [DONE]\n\n"


def _job_id(request: Request) -> str:
    job_id = request.path_params["job_id"]
    if len(job_id) != 64 or any(c not in "0123456789abcdef" for c in job_id):
        raise ApiError(400, "a job id is 64 lowercase hex digits", param="job_id")
    return job_id


async def _ignore_tokens(tokens: list[wire.Token]) -> None:
    return None


def _send_quietly(send, item) -> None:
    try:
        send.send_nowait(item)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class ApiUnavailable(Exception):
    """The API's address cannot be bound; the message says what to change."""


async def start(nursery: trio.Nursery, api: Api, host: str, port: int) -> str:
    """Serve ``api`` in ``nursery`` on host:port (0: any free port) and return its URL.

    Raises: ApiUnavailable when the address cannot be bound (a port in use, a host not on this machine).
    """
    try:
        url = await nursery.start(serve, api, host, port)
    except* OSError as group:  # hypercorn binds inside its nurseries
        exc = sole_exception(group)
        raise ApiUnavailable(f"cannot serve the HTTP API on {host}:{port}: {getattr(exc, 'strerror', None) or exc} "
                             f"(is another node or program using that port? choose another with --api-port)") from None
    log.info("OpenAI-compatible API on %s/v1 (keys: `inferad apikey create --home %s`)", url, api.home.path)
    return url


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
