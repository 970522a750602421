"""Rendering the model's own chat template: the one renderer, used by the engine for every request
(text-only or with media, online or batch), over the tokenizer vLLM already loaded."""

from __future__ import annotations

from typing import Any, Callable

from serve_app.errors import InvalidRequestError


def chat_renderer(tokenizer: Any) -> Callable[[list[dict[str, Any]]], str]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template")

    def render(messages: list[dict[str, Any]]) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raises TemplateError for messages the template refuses
            raise InvalidRequestError(f"messages: the model's chat template refused them: {exc}") from None

    return render
