"""OpenAI request → vLLM ``SamplingParams`` keyword arguments (pure: a plain dict).

Only what the client set is passed; the engine fills the rest from the model's
``generation_config.json`` the way ``vllm serve`` does, so both give the same defaults.
"""

from __future__ import annotations

from typing import Any

from serve_app.api.budgets import check_json_schema
from serve_app.app_config import ServingSection
from serve_app.errors import InvalidRequestError
from serve_app.api.protocol import ChatCompletionRequest

# OpenAI name → SamplingParams name, copied when the client set it.
_DIRECT = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "seed": "seed",
    "min_tokens": "min_tokens",
}


def sampling_kwargs(req: ChatCompletionRequest, serving: ServingSection,
                    max_model_len: int | None = None) -> dict[str, Any]:
    """The SamplingParams fields this request sets. ``structured_outputs`` is a plain dict here
    (the engine wraps it in vLLM's ``StructuredOutputsParams``). ``max_model_len``: the context
    length when the config states it (the engine checks again against the real one)."""
    if max_model_len is not None:
        for name in ("max_tokens", "min_tokens"):
            value = req.output_token_limit if name == "max_tokens" else req.min_tokens
            if value is not None and value >= max_model_len:
                raise InvalidRequestError(
                    f"{name} = {value} does not fit this model's context length of {max_model_len} tokens "
                    "(prompt included)", param=name)
    if req.n > serving.max_n:
        raise InvalidRequestError(f"n = {req.n} exceeds this server's limit of {serving.max_n}", param="n")
    if req.top_logprobs is not None and req.top_logprobs > serving.max_top_logprobs:
        raise InvalidRequestError(
            f"top_logprobs = {req.top_logprobs} exceeds this server's limit of {serving.max_top_logprobs}",
            param="top_logprobs",
        )
    out: dict[str, Any] = {"n": req.n}
    for src, dst in _DIRECT.items():
        value = getattr(req, src)
        if value is not None:
            out[dst] = value
    # None means "up to the model's context length" (vLLM computes max_model_len - prompt length).
    out["max_tokens"] = req.output_token_limit
    if req.stop is not None:
        out["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    if req.logprobs:
        out["logprobs"] = req.top_logprobs or 0
    if req.ignore_eos:
        out["ignore_eos"] = True
    if req.response_format is not None and req.response_format.type != "text":
        if req.response_format.type == "json_object":
            out["structured_outputs"] = {"json_object": True}
        else:
            schema = req.response_format.json_schema.schema_  # validated present
            if not schema:
                raise InvalidRequestError(
                    "response_format.json_schema.schema is empty", param="response_format.json_schema.schema"
                )
            check_json_schema(schema, serving)
            out["structured_outputs"] = {"json": schema}
    return out
