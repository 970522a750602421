"""OpenAI-shaped errors (pure: no Ray, no vLLM).

Every error that reaches a client has the body ``{"error": {"message", "type", "code"}}`` and an
HTTP status. Exceptions raised anywhere in the pipeline (ingress, preprocessor replica, engine
replica) subclass :class:`ServeAppError`; Ray re-raises a remote exception as a subclass of the
original class, so ``isinstance`` checks keep working across replicas.
"""

from __future__ import annotations

from typing import Any


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


class EngineError(ServeAppError):
    status_code = 500
    error_type = "internal_error"


class EngineStartError(EngineError):
    """The vLLM engine of a replica (or batch actor) could not start; the message names the cause."""


def error_body(message: str, error_type: str, code: int, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
