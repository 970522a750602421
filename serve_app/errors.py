"""OpenAI-shaped errors (pure: no Ray, no vLLM), and the one place exceptions become them.

Every error that reaches a client has the body ``{"error": {"message", "type", "param", "code"}}``
and an HTTP status. Exceptions raised anywhere in the pipeline (ingress, preprocessor replica,
engine replica, batch actors) subclass :class:`ServeAppError` or are mapped to one by
:func:`to_serve_error` (what the ingress and the batch job answer) and :func:`engine_error` (what
the engine makes of vLLM's failures). Pydantic validation errors become one readable message by
:func:`format_validation_error` (request bodies and the app config alike).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from serve_app.media.errors import MediaError


class ServeAppError(Exception):
    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.status_code, self.param)

    # Ray pickles exceptions between replicas; keep the keyword argument on the way back.
    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.param))


def _rebuild(cls, message, param):
    return cls(message, param=param)


class InvalidRequestError(ServeAppError):
    """The request is malformed or asks for something unsupported (HTTP 400)."""

    status_code = 400
    error_type = "invalid_request_error"


class RequestTooLargeError(ServeAppError):
    status_code = 413
    error_type = "invalid_request_error"


class ModelNotFoundError(ServeAppError):
    status_code = 404
    error_type = "not_found_error"


class OverloadedError(ServeAppError):
    status_code = 503
    error_type = "overloaded_error"


class DeadlineExceededError(ServeAppError):
    """The request's work did not finish within its deadline; all of it was stopped (HTTP 504)."""

    status_code = 504
    error_type = "timeout_error"


class UnauthorizedError(ServeAppError):
    status_code = 401
    error_type = "invalid_request_error"


class EngineError(ServeAppError):
    status_code = 500
    error_type = "internal_error"


class EngineStartError(EngineError):
    """The vLLM engine of a replica (or batch actor) could not start; the message names the cause."""


def error_body(message: str, error_type: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _is_a(exc: BaseException, class_name: str) -> bool:
    # By name: this module imports neither Ray nor vLLM.
    return any(c.__name__ == class_name for c in type(exc).__mro__)


def to_serve_error(exc: BaseException) -> ServeAppError:
    """Anything raised while serving a request → the OpenAI error the client gets. Ray re-raises a
    replica's exception as a RayTaskError whose ``cause`` is the original exception."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return to_serve_error(cause)
    if isinstance(exc, ServeAppError):
        return exc
    if isinstance(exc, MediaError):
        return InvalidRequestError(str(exc))
    if _is_a(exc, "BackPressureError"):  # raised in the ingress by a full deployment handle
        return OverloadedError("the server is overloaded; retry later")
    # No exception text or class name reaches the client: the replica's log has them.
    return EngineError("internal error")


def is_client_error(exc: BaseException) -> bool:
    """Whether vLLM refused the request itself: ``ValueError`` (vLLM 0.26's input validation)
    or a ``VLLMClientError`` (vLLM's 4xx family in newer versions, e.g. ``VLLMValidationError`` for a
    prompt over the context length; not a ValueError there)."""
    return isinstance(exc, ValueError) or _is_a(exc, "VLLMClientError")


def engine_cause(exc: BaseException) -> BaseException:
    """vLLM wraps input-processing failures in EngineGenerateError; the cause says what."""
    if type(exc).__name__ == "EngineGenerateError" and exc.__cause__ is not None:
        return exc.__cause__
    return exc


def engine_error(exc: BaseException, *, before_output: bool) -> ServeAppError:
    """A failure while vLLM ran one request → its OpenAI error. vLLM's verdict on the request itself
    (prompt longer than max_model_len, ...) is a 400, but only before any output: later the
    request was accepted and anything that breaks is the engine's fault."""
    cause = engine_cause(exc)
    if isinstance(cause, ServeAppError):
        return cause
    if before_output and is_client_error(cause):
        return InvalidRequestError(truncate(str(cause), 500))
    return EngineError("engine failure (details are in the engine replica's log)")


def truncate(text: str, limit: int = 200) -> str:
    """A user-supplied (or otherwise unbounded) string as it may appear in an error message."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_PART_TAGS = {"text", "image_url", "image", "video_url", "video"}


def _path(loc: tuple, prefix: str = "") -> str:
    """('messages', 0, 'content', 'list[...]', 1, 'image_url', 'image_url', 'url') →
    'messages[0].content[1].image_url.url': pydantic's union-branch labels are dropped."""
    out, prev = prefix, None
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p == "str" or "[" in p:
            pass  # a union branch label such as 'list[...]'
        elif isinstance(prev, int) and p in _PART_TAGS and out.rsplit(".", 1)[-1].startswith("content"):
            pass  # the discriminator tag of a content part
        else:
            out += f".{p}" if out else str(p)
        prev = p
    return out


def format_validation_error(
    exc: ValidationError,
    *,
    prefix: str = "",
    field: str = "field",
    unknown: str = "unsupported field (this server does not implement it)",
    show_input: bool = False,
    limit: int | None = 5,
) -> str:
    """One readable sentence per problem, naming the field path. ``field``/``unknown`` word it for
    the reader (a request's fields, a config's keys); ``show_input`` repeats the bad value."""
    errors = exc.errors()
    # `content` is `str | list[part]`: when the list branch has the real problem, drop the
    # "should be a valid string" noise from the other branch.
    if len(errors) > 1:
        errors = [e for e in errors if not (e["loc"] and e["loc"][-1] == "str")] or errors
    parts = []
    for err in errors[:limit]:
        loc = _path(err["loc"], prefix) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: {unknown}")
        elif err["type"] == "missing":
            parts.append(f"{loc}: required {field} is missing")
        elif err["type"] == "json_invalid":
            parts.append(f"request body is not valid JSON: {err['msg']}")
        elif err["type"] == "union_tag_invalid":
            tag = truncate(repr((err.get("input") or {}).get("type")), 100)
            parts.append(f"{loc}: unsupported content part type {tag} "
                         f"(supported: text, image_url, image, video_url, video)")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc} = {truncate(repr(err.get('input')), 200)}: {msg}" if show_input else f"{loc}: {msg}")
    return "; ".join(parts) if parts else "invalid request"
