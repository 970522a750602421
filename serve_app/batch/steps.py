"""The per-request steps of the batch job, without Ray: validate a request body exactly as the
online ingress does, prepare its media with the shared
:class:`~serve_app.preprocess.preparer.MediaPreparer`, run it on an
:class:`~serve_app.engine.runtime.EngineRuntime` and build the output record.

:mod:`serve_app.batch` runs :class:`BatchPreprocessor` in CPU actors and :func:`run_on_engine` in
the engine actor; tests run them in-process with a fake engine.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from serve_app.app_config import AppConfig
from serve_app.batch.io import LineError, RequestLine, line_error_record, parse_line, response_record
from serve_app.errors import InvalidRequestError, ServeAppError, format_validation_error, to_serve_error
from serve_app.engine.contract import EngineRequest
from serve_app.preprocess.prepared import PreparedMedia
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.api.request_checks import ValidatedRequest, check_request
from serve_app.api.responses import CompletionAccumulator


@dataclass
class PreparedItem:
    """What a preprocessing actor hands the engine actor (through the object store)."""

    custom_id: str
    request: EngineRequest
    media: PreparedMedia | None = None  # None: text only


def validate_body(body: dict[str, Any], config: AppConfig) -> ValidatedRequest:
    """The online ingress's checks (:func:`serve_app.api.request_checks.check_request`), plus the
    batch job's own: no streaming."""
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequestError(format_validation_error(exc)) from None
    if req.model == config.model.name and req.stream:
        raise InvalidRequestError("stream is not supported in a batch job; remove it or set it to false",
                                  param="stream")
    return check_request(req, config)


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def error_record(custom_id: str, request_id: str, err: ServeAppError) -> dict[str, Any]:
    return response_record(custom_id, err.status_code, request_id, err.to_body())


class BatchPreprocessor:
    """Parses one input line and prepares its prompt. Every problem with the request becomes an
    output record (returned, not raised)."""

    def __init__(self, config: AppConfig, preparer: Any = None) -> None:
        self._config = config
        if preparer is None:
            from serve_app.preprocess.preparer import MediaPreparer

            preparer = MediaPreparer(config)
        self._preparer = preparer

    async def prepare_line(self, raw: bytes | str, line: int) -> PreparedItem | dict[str, Any]:
        parsed = parse_line(raw, line, max_bytes=self._config.serving.max_request_bytes)
        if isinstance(parsed, LineError):
            return line_error_record(parsed)
        if parsed is None:  # the driver never sends blank lines
            return line_error_record(LineError(line, "invalid_line", f"line {line}: blank line"))
        return await self.prepare(parsed)

    async def prepare(self, item: RequestLine) -> PreparedItem | dict[str, Any]:
        request_id = new_request_id()
        try:
            v = validate_body(item.body, self._config)
            # As online: a text-only request skips media work; the engine renders every prompt.
            media = (await self._preparer.prepare(v.plan.media, token_budget=v.token_budget)
                     if v.plan.media else None)
        except Exception as exc:  # noqa: BLE001 - every failure of one request is that request's record
            return error_record(item.custom_id, request_id, to_serve_error(exc))
        return PreparedItem(item.custom_id, v.engine_request(request_id), media)


class EngineLike(Protocol):
    def generate(self, request: EngineRequest, media: PreparedMedia | None = None): ...  # async iterator of Delta

    async def check_health(self) -> None: ...


class EngineUnavailable(RuntimeError):
    """The engine itself is broken (not one request): stop the job without recording the request,
    so a rerun does it again."""


async def run_on_engine(runtime: EngineLike, item: PreparedItem | dict[str, Any], model_name: str,
                        clock=time.time) -> dict[str, Any]:
    """One prepared request → its output record (an error record passes straight through)."""
    if isinstance(item, dict):
        return item
    request = item.request
    acc = CompletionAccumulator(request.n, want_logprobs=request.top_logprobs is not None)
    try:
        async for delta in runtime.generate(request, item.media):
            acc.add(delta)
    except Exception as exc:  # noqa: BLE001
        err = to_serve_error(exc)
        if err.status_code >= 500:
            try:
                await runtime.check_health()
            except Exception as health_exc:  # noqa: BLE001
                raise EngineUnavailable(f"the engine failed its health check after {err.message!r}: "
                                        f"{type(health_exc).__name__}: {health_exc}") from None
        return error_record(item.custom_id, request.request_id, err)
    body = acc.response(request_id=request.request_id, model=model_name, created=int(clock()))
    return response_record(item.custom_id, 200, request.request_id, body)
