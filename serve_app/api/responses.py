"""Engine deltas (:class:`~serve_app.engine.contract.Delta`) → OpenAI chat-completion JSON (pure)."""

from __future__ import annotations

import json
from typing import Any, Iterable

from serve_app.engine.contract import ChoiceDelta, Delta


class CompletionAccumulator:
    """Collects deltas of one request into the final non-streaming response."""

    def __init__(self, n: int, want_logprobs: bool) -> None:
        self._delta = Delta(choices=[ChoiceDelta(i, token_ids=[], logprobs=[] if want_logprobs else None)
                                     for i in range(n)])

    def add(self, delta: Delta) -> None:
        self._delta.merge(delta)

    @property
    def choices(self) -> list[ChoiceDelta]:
        return self._delta.choices

    @property
    def prompt_tokens(self) -> int:
        return self._delta.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)

    def response(self, *, request_id: str, model: str, created: int) -> dict[str, Any]:
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": {"content": c.logprobs} if c.logprobs is not None else None,
                    "finish_reason": c.finish_reason,
                    "token_ids": c.token_ids or [],
                }
                for c in sorted(self.choices, key=lambda c: c.index)
            ],
            "usage": usage(self.prompt_tokens, self.completion_tokens),
        }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkStream:
    """Turns deltas into SSE ``data:`` lines of ``chat.completion.chunk`` objects."""

    def __init__(self, *, request_id: str, model: str, created: int, n: int, include_usage: bool) -> None:
        self._base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._started = [False] * n
        self._include_usage = include_usage
        self._prompt_tokens = 0
        self._completion_tokens = 0

    def _chunk(self, choices: list[dict[str, Any]], usage_obj: dict[str, int] | None = None) -> str:
        body = dict(self._base, choices=choices)
        if self._include_usage:
            body["usage"] = usage_obj
        return "data: " + json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n\n"

    def on_delta(self, delta: Delta) -> Iterable[str]:
        self._prompt_tokens = delta.prompt_tokens or self._prompt_tokens
        out = []
        for c in delta.choices:
            i = c.index
            self._completion_tokens += c.num_tokens
            if not self._started[i]:
                self._started[i] = True
                out.append(self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]))
            if c.text or c.num_tokens or c.finish_reason is not None:
                choice = {
                    "index": i,
                    "delta": {"content": c.text} if (c.text or c.num_tokens) else {},
                    "logprobs": {"content": c.logprobs} if c.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
                out.append(self._chunk([choice]))
        return out

    def finish(self) -> Iterable[str]:
        out = []
        if self._include_usage:
            out.append(self._chunk([], usage(self._prompt_tokens, self._completion_tokens)))
        out.append("data: [DONE]\n\n")
        return out

    def error(self, body: dict[str, Any]) -> str:
        """An error after the stream started: OpenAI's convention is an ``error`` event in-stream."""
        return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"
