"""Ingress deployment: the OpenAI-compatible HTTP API (FastAPI under ``@serve.ingress``).

Per request: validate (pure models) → plan the chat (pure) → for media, ``Preprocessor.prepare``
→ ``Engine.generate``, with the preprocessor's DeploymentResponse passed straight into the engine
call so the pixels go preprocessor → engine through the object store, never through here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.app_config import AppConfig
from serve_app.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    OverloadedError,
    RequestTooLargeError,
    ServeAppError,
    format_validation_error,
    to_serve_error,
)
from serve_app.api.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    ModelList,
)
from serve_app.api.auth import ApiKeys, load_keys
from serve_app.api.request_checks import check_request, configured_context
from serve_app.api.responses import ChunkStream, CompletionAccumulator
from serve_app.observability import replica_stats, request_ids
from serve_app.observability.request_metrics import RequestObserver

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="Qwen2.5-VL on Ray Serve",
    description="OpenAI-compatible chat completions for Qwen2.5-VL with images and videos.",
    version="0.1.0",
)

_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 500, 503, 504)}
_RETRY_AFTER_S = "1"  # the 503s say when to come back
_BY_VALUE_MAX_BYTES = 1 << 20  # text-only requests up to this body size go to the engine over gRPC
_STATS_TIMEOUT_S = 10.0


def transport(handle: DeploymentHandle, *, by_reference: bool, **options: Any) -> DeploymentHandle:
    """``handle`` pinned to one call transport. ``_by_reference`` is a private option of Ray Serve's
    handles (Ray 2.60): True sends calls as Ray actor calls, whose DeploymentResponse arguments reach
    the callee as object-store references; False sends them by value over Serve's gRPC channel.
    Under RAY_SERVE_THROUGHPUT_OPTIMIZED the default is by value. The one place that names it, so a
    Ray upgrade that renames or drops it is fixed here (tests/api/test_ingress_wiring.py checks it)."""
    return handle.options(_by_reference=by_reference, **options)


def _error(exc: ServeAppError) -> JSONResponse:
    headers = {"Retry-After": _RETRY_AFTER_S} if exc.status_code == 503 else None
    if exc.status_code == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return JSONResponse(exc.to_body(), status_code=exc.status_code, headers=headers)


def _refused(exc: ServeAppError, where: str) -> JSONResponse:
    """One log line per refused request: status, type, parameter and our own message (already
    truncated, no traceback; the messages name fields and limits, never the prompt or a key)."""
    logger.info("refused %s: %d %s param=%s: %.300s", where, exc.status_code, exc.error_type, exc.param, exc.message)
    return _error(exc)


def _openapi_with_models() -> dict[str, Any]:
    """FastAPI only emits schemas used by parameters; the request body is parsed by hand (to cap
    its size), so its schema and the response schemas are added here."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionRequest, ChatCompletionResponse, ChatCompletionChunk, ErrorResponse, ModelList):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        for name, sub in js.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components[model.__name__] = js
    app.openapi_schema = schema
    return schema


app.openapi = _openapi_with_models  # type: ignore[method-assign]


# Everything that configures `app` must come before @serve.ingress, which freezes a copy of it.
@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, preprocessor: DeploymentHandle, engine: DeploymentHandle, config: AppConfig) -> None:
        # Media requests go by reference: the preprocessor's DeploymentResponse then reaches the
        # engine replica as an object-store reference, so pixels never pass through this replica.
        # (By value, which is Serve's default under RAY_SERVE_THROUGHPUT_OPTIMIZED, would resolve
        # the prepared media here and send it on.) Text-only requests up to _BY_VALUE_MAX_BYTES go
        # by value (gRPC): a streamed call that way measured 1.5-3 ms faster than a Ray actor call.
        self._pre = transport(preprocessor, by_reference=True)
        self._engine = transport(engine, by_reference=True)
        self._engine_stream = transport(engine, by_reference=True, stream=True)
        self._engine_stream_text = transport(engine, by_reference=False, stream=True)
        self._config = config
        self._model = config.model.name
        self._created = int(time.time())
        self._max_model_len: int | None = None
        self._keys = ApiKeys(load_keys(config.serving.api_keys_env, config.serving.api_keys_file))

    async def _request(self, raw: Request) -> tuple[ChatCompletionRequest, int]:
        limit = self._config.serving.max_request_bytes
        declared = raw.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(f"request body exceeds {limit} bytes")
        body = bytearray()
        async for chunk in raw.stream():
            body += chunk
            if len(body) > limit:
                raise RequestTooLargeError(f"request body exceeds {limit} bytes")
        try:
            return ChatCompletionRequest.model_validate_json(bytes(body)), len(body)
        except ValidationError as exc:
            raise InvalidRequestError(format_validation_error(exc)) from None

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses={
            200: {
                "description": "A chat completion, or with stream=true an SSE stream of chunks ending in [DONE]",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionResponse"}},
                    "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}},
                },
            },
            **_ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
            }
        },
    )
    async def chat_completions(self, raw: Request):
        observer = RequestObserver()
        response = await self._chat_completions(raw, observer)
        if not isinstance(response, StreamingResponse):  # a stream records itself when it ends
            observer.finish(response.status_code)
        return response

    async def _chat_completions(self, raw: Request, observer: RequestObserver):
        try:
            # The id Serve's proxy took from the client's X-Request-Id (or made up) and will send back.
            request_id = request_ids.request_id(raw.headers.get(request_ids.HEADER))
        except request_ids.InvalidRequestIdError as exc:
            return _error(InvalidRequestError(str(exc), param="X-Request-Id"))
        try:
            self._keys.check(raw.headers.get("authorization"))
            req, body_bytes = await self._request(raw)
            checked = check_request(req, self._config, await self._context())
        except ServeAppError as exc:
            return _refused(exc, f"chat completion {request_id}")

        engine_request = checked.engine_request(request_id, stream=req.stream)
        engine_request = dataclasses.replace(engine_request, sent_at=time.time())
        if checked.plan.media:
            # DeploymentResponse: resolved in the engine replica
            media: Any = self._pre.prepare.remote(checked.plan.media, request_id=request_id,
                                                  sent_at=engine_request.sent_at, token_budget=checked.token_budget)
            engine = self._engine_stream
        else:
            media = None
            # Replica gRPC messages are capped at 4 MiB (RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH):
            # a huge text prompt goes by reference, so it still gets vLLM's 400, not a transport 500.
            engine = self._engine_stream_text if body_bytes <= _BY_VALUE_MAX_BYTES else self._engine_stream
        gen = engine.generate.remote(engine_request, media)
        if req.stream:
            return await self._stream(gen, req, request_id, observer, media)
        acc = CompletionAccumulator(req.n, want_logprobs=checked.top_logprobs is not None)
        try:
            async for delta in gen:
                observer.on_delta(delta)
                acc.add(delta)
        except asyncio.CancelledError:
            # The client went away (or the proxy's request_timeout_s passed): stop the engine request
            # and the media work (fetches and decodes in the preprocessor) too.
            gen.cancel()
            if media is not None:
                media.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error body
            return self._failure(exc, request_id)
        return JSONResponse(acc.response(request_id=request_id, model=self._model, created=int(time.time())))

    async def _stream(self, gen, req: ChatCompletionRequest, request_id: str, observer: RequestObserver,
                      media: Any = None):
        # Wait for the first delta before sending headers, so errors (bad media, prompt too long)
        # still get a proper 4xx status instead of an in-stream error.
        try:
            first = await gen.__anext__()
        except StopAsyncIteration:
            first = None
        except asyncio.CancelledError:
            gen.cancel()
            if media is not None:
                media.cancel()
            raise
        except Exception as exc:  # noqa: BLE001
            return self._failure(exc, request_id)
        if first is not None:
            observer.on_delta(first)
        chunks = ChunkStream(
            request_id=request_id, model=self._model, created=int(time.time()), n=req.n,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
        )

        async def body() -> AsyncIterator[str]:
            try:
                if first is not None:
                    for line in chunks.on_delta(first):
                        yield line
                    async for delta in gen:
                        observer.on_delta(delta)
                        for line in chunks.on_delta(delta):
                            yield line
                for line in chunks.finish():
                    yield line
                observer.finish(200)
            except asyncio.CancelledError:
                # The client went away: cancelling the handle generator cancels the engine-side
                # generator, which aborts the vLLM request.
                gen.cancel()
                observer.finish(499)  # nginx's "client closed request"
                raise
            except Exception as exc:  # noqa: BLE001
                err = self._classify_and_log(exc, request_id)
                observer.finish(err.status_code)
                yield chunks.error(err.to_body())
                yield "data: [DONE]\n\n"

        # X-Request-Id: Serve's proxy sends back the id it read (or made), which is request_id.
        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _engine_context(self) -> int:
        """The engine's max_model_len (asked once per replica; /v1/models answers only once the engine does)."""
        if self._max_model_len is None:
            info = await self._engine.model_info.remote()
            self._max_model_len = info["max_model_len"]
        return self._max_model_len

    async def _context(self) -> int | None:
        """max_model_len for the request checks: the config's, else the engine's."""
        configured = configured_context(self._config)
        if configured is not None:
            return configured
        try:
            return await self._engine_context()
        except Exception as exc:  # noqa: BLE001 - without it only the media budget waits for the engine's check
            logger.warning("engine model_info failed (%s); media token budgets wait for it", type(exc).__name__)
            return None

    def _classify_and_log(self, exc: BaseException, request_id: str) -> ServeAppError:
        err = to_serve_error(exc)
        if err.status_code >= 500 and err.status_code not in (503, 504):
            logger.error("request %s failed: %s", request_id, type(exc).__name__)
        else:
            logger.info("refused request %s: %d %s param=%s: %.300s", request_id, err.status_code, err.error_type,
                        err.param, err.message)
        return err

    def _failure(self, exc: BaseException, request_id: str) -> JSONResponse:
        return _error(self._classify_and_log(exc, request_id))

    @app.get("/v1/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
    async def models(self, raw: Request) -> Any:
        try:
            self._keys.check(raw.headers.get("authorization"))
        except ServeAppError as exc:
            return _refused(exc, "models")
        max_model_len = await self._engine_context()
        return {
            "object": "list",
            "data": [{"id": self._model, "object": "model", "created": self._created, "owned_by": "serve_app",
                      "max_model_len": max_model_len}],
        }

    @app.get("/stats")
    async def stats(self, raw: Request) -> Any:
        """Operational counters of every engine replica (requests vLLM is still working on) and
        their totals (:func:`serve_app.observability.replica_stats.engine_stats`)."""
        try:
            self._keys.check(raw.headers.get("authorization"))
        except ServeAppError as exc:
            return _refused(exc, "stats")
        try:
            # A control-plane call to each running replica, outside the request queues (Serve's
            # broadcast): counters of a busy replica are what /stats is for.
            answers = await self._engine.broadcast("stats").results_async(timeout_s=_STATS_TIMEOUT_S,
                                                                          return_exceptions=True)
        except TimeoutError:
            return _error(DeadlineExceededError(
                f"the engine replicas did not all answer within {_STATS_TIMEOUT_S:g} s"))
        except DeploymentUnavailableError:
            return _error(OverloadedError("no engine replica is running"))
        return {"engine": replica_stats.engine_stats(answers)}

    @app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}
