"""Engine deltas (:mod:`serve_app.engine.outputs`) → OpenAI chat-completion JSON (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class _ChoiceAcc:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class CompletionAccumulator:
    """Collects deltas of one request into the final non-streaming response."""

    def __init__(self, n: int, want_logprobs: bool) -> None:
        self.choices = [_ChoiceAcc(logprobs=[] if want_logprobs else None) for _ in range(n)]
        self.prompt_tokens = 0

    def add(self, delta: dict[str, Any]) -> None:
        self.prompt_tokens = delta["prompt_tokens"] or self.prompt_tokens
        for c in delta["choices"]:
            acc = self.choices[c["index"]]
            acc.text.append(c["text"])
            acc.token_ids.extend(c["token_ids"])
            if acc.logprobs is not None and c.get("logprobs"):
                acc.logprobs.extend(c["logprobs"])
            if c["finish_reason"] is not None:
                acc.finish_reason = c["finish_reason"]

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)

    def response(self, *, request_id: str, model: str, created: int) -> dict[str, Any]:
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(c.text)},
                    "logprobs": {"content": c.logprobs} if c.logprobs is not None else None,
                    "finish_reason": c.finish_reason,
                    "token_ids": c.token_ids,
                }
                for i, c in enumerate(self.choices)
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

    def on_delta(self, delta: dict[str, Any]) -> Iterable[str]:
        self._prompt_tokens = delta["prompt_tokens"] or self._prompt_tokens
        out = []
        for c in delta["choices"]:
            i = c["index"]
            self._completion_tokens += len(c["token_ids"])
            if not self._started[i]:
                self._started[i] = True
                out.append(self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]))
            if c["text"] or c["token_ids"] or c["finish_reason"] is not None:
                choice = {
                    "index": i,
                    "delta": {"content": c["text"]} if (c["text"] or c["token_ids"]) else {},
                    "logprobs": {"content": c["logprobs"]} if c.get("logprobs") else None,
                    "finish_reason": c["finish_reason"],
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
