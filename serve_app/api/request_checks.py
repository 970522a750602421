"""What every chat request goes through before any replica work: one implementation for the
online ingress and the batch job (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.app_config import AppConfig
from serve_app.api.budgets import check_explicit_size, check_item_limits
from serve_app.api.chat import ChatPlan, plan_chat
from serve_app.api.prompt_tokens import chat_text_floor
from serve_app.errors import InvalidRequestError, ModelNotFoundError, truncate
from serve_app.media.errors import MediaError
from serve_app.media.spec import validate_spec
from serve_app.media.token_budget import TokenBudget, check_tokens, token_floor
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.api.sampling import sampling_kwargs
from serve_app.engine.contract import EngineRequest


@dataclass(frozen=True)
class ValidatedRequest:
    request: ChatCompletionRequest
    sampling: dict[str, Any]
    plan: ChatPlan
    top_logprobs: int | None  # None: no logprobs asked for
    token_budget: TokenBudget | None = None  # with media and a known context: what the media may take

    def engine_request(self, request_id: str, *, stream: bool = False) -> EngineRequest:
        return EngineRequest(request_id, self.plan.template_messages, self.sampling, self.top_logprobs, stream)


def configured_context(config: AppConfig) -> int | None:
    """The context length the config states (``engine_kwargs.max_model_len``, else the long-context
    window); None leaves it to vLLM (the checkpoint's), which the ingress then asks the engine for."""
    stated = config.engine.engine_kwargs.get("max_model_len")
    if isinstance(stated, int) and not isinstance(stated, bool):
        return stated
    return config.model.long_context.window if config.model.long_context else None


def check_request(req: ChatCompletionRequest, config: AppConfig, context: int | None = None) -> ValidatedRequest:
    """Model name, sampling limits, the chat plan, every media item's options and the media's token
    budget, in that order; raises :class:`ServeAppError`. Pure and cheap, so every client error it
    can see is answered here, before any replica hop. ``context``: max_model_len when the caller
    knows it (default :func:`configured_context`)."""
    served = config.model.name
    if req.model != served:
        raise ModelNotFoundError(f"model '{truncate(req.model, 100)}' is not served here; this server serves '{served}'",
                                 param="model")
    context = context if context is not None else configured_context(config)
    sampling = sampling_kwargs(req, config.serving, context)
    plan = plan_chat(req.messages, config.media.max_items_per_request, config.media)
    for spec in plan.media:
        try:
            validate_spec(spec, config.media)
        except MediaError as exc:
            raise InvalidRequestError(str(exc)) from None
        check_explicit_size(spec, config.media)
    check_item_limits(plan.media, config.engine.engine_kwargs)
    budget = None
    if plan.media and context is not None:
        limit = req.output_token_limit
        output = limit if limit is not None else max(req.min_tokens or 0, 1)
        budget = TokenBudget(context, output, chat_text_floor(plan.template_messages, context), limit is not None)
        try:
            check_tokens(plan.media, [token_floor(s, config.media) for s in plan.media], budget, exact=False)
        except MediaError as exc:
            raise InvalidRequestError(str(exc), param="messages") from None
    top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
    return ValidatedRequest(req, sampling, plan, top_logprobs, budget)
