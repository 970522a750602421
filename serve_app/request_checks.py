"""What every chat request goes through before any replica work, and how failures map to OpenAI
errors: one implementation for the online ingress and the batch job (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.app_config import AppConfig
from serve_app.chat import ChatPlan, plan_chat
from serve_app.errors import EngineError, InvalidRequestError, ModelNotFoundError, ServeAppError
from serve_app.media.errors import MediaError
from serve_app.protocol import ChatCompletionRequest
from serve_app.sampling import sampling_kwargs


@dataclass(frozen=True)
class ValidatedRequest:
    request: ChatCompletionRequest
    sampling: dict[str, Any]
    plan: ChatPlan
    top_logprobs: int | None  # None: no logprobs asked for


def check_request(req: ChatCompletionRequest, config: AppConfig) -> ValidatedRequest:
    """Model name, sampling limits and the chat plan, in that order; raises :class:`ServeAppError`."""
    served = config.model.name
    if req.model != served:
        raise ModelNotFoundError(f"model '{req.model}' is not served here; this server serves '{served}'",
                                 param="model")
    sampling = sampling_kwargs(req, config.serving)
    plan = plan_chat(req.messages, config.media.max_items_per_request, config.media)
    top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return ValidatedRequest(req, sampling, plan, top_logprobs)


def classify_exception(exc: BaseException) -> ServeAppError:
    """Anything raised while serving a request → the OpenAI error the client gets. Ray re-raises a
    replica's exception as a RayTaskError whose ``cause`` is the original exception."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return classify_exception(cause)
    if isinstance(exc, ServeAppError):
        return exc
    if isinstance(exc, MediaError):
        return InvalidRequestError(str(exc))
    return EngineError(f"internal error: {type(exc).__name__}")
