"""What every chat request goes through before any replica work: one implementation for the
online ingress and the batch job (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.app_config import AppConfig
from serve_app.api.budgets import check_explicit_size, check_item_limits
from serve_app.api.chat import ChatPlan, plan_chat
from serve_app.errors import InvalidRequestError, ModelNotFoundError, truncate
from serve_app.media.errors import MediaError
from serve_app.media.spec import validate_spec
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.api.sampling import sampling_kwargs
from serve_app.engine.contract import EngineRequest


@dataclass(frozen=True)
class ValidatedRequest:
    request: ChatCompletionRequest
    sampling: dict[str, Any]
    plan: ChatPlan
    top_logprobs: int | None  # None: no logprobs asked for

    def engine_request(self, request_id: str, *, stream: bool = False) -> EngineRequest:
        return EngineRequest(request_id, self.plan.template_messages, self.sampling, self.top_logprobs, stream)


def check_request(req: ChatCompletionRequest, config: AppConfig) -> ValidatedRequest:
    """Model name, sampling limits, the chat plan and every media item's options, in that order;
    raises :class:`ServeAppError`. Pure and cheap, so every client error is answered here, before
    any replica hop."""
    served = config.model.name
    if req.model != served:
        raise ModelNotFoundError(f"model '{truncate(req.model, 100)}' is not served here; this server serves '{served}'",
                                 param="model")
    context = config.engine.engine_kwargs.get("max_model_len")
    sampling = sampling_kwargs(req, config.serving, context if isinstance(context, int) else None)
    plan = plan_chat(req.messages, config.media.max_items_per_request, config.media)
    for spec in plan.media:
        try:
            validate_spec(spec, config.media)
        except MediaError as exc:
            raise InvalidRequestError(str(exc)) from None
        check_explicit_size(spec, config.media)
    check_item_limits(plan.media, config.engine.engine_kwargs)
    top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return ValidatedRequest(req, sampling, plan, top_logprobs)

