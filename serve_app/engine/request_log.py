"""One log line per engine request, written when it ends (pure): the request id, how it ended, its
token counts and timings. Never the prompt, the media or anything from the request's headers.

The engine replica logs it to Serve's replica logger (``ray.serve``) like the ingress and the
preprocessor do, so the line carries Serve's ``request_id`` field too and is JSON under
``logging_config.encoding: JSON``, with the same fields under ``serve_app_request``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from serve_app.engine.contract import Delta

CLIENT_CLOSED = 499  # the caller went away before the end (nginx's "client closed request")
EXTRA_KEY = "serve_app_request"


@dataclass
class RequestRecord:
    """What one engine request did, filled in as its deltas go out."""

    request_id: str
    queue_s: float | None = None  # ingress dispatch (or media ready) → this replica started it
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    started: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    media_tokens: dict[str, int] = field(default_factory=dict)
    finish_reasons: set[str] = field(default_factory=set)
    first_token: float | None = None
    status: int | None = None
    error_type: str | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def on_delta(self, delta: Delta) -> None:
        tokens = sum(c.num_tokens for c in delta.choices)
        if tokens and self.first_token is None:
            self.first_token = self.clock()
        self.completion_tokens += tokens
        self.prompt_tokens = delta.prompt_tokens or self.prompt_tokens
        self.finish_reasons.update(c.finish_reason for c in delta.choices if c.finish_reason)

    def succeeded(self) -> None:
        self.status = 200

    def failed(self, status: int, error_type: str) -> None:
        self.status, self.error_type = status, error_type

    def fields(self) -> dict[str, Any]:
        """The line's fields; a request that neither finished nor failed was abandoned by its caller."""
        total = self.clock() - self.started
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "status": self.status if self.status is not None else CLIENT_CLOSED,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "image_tokens": self.media_tokens.get("image", 0),
            "video_tokens": self.media_tokens.get("video", 0),
            "finish_reason": ",".join(sorted(self.finish_reasons)) or None,
            "queue_s": _round(self.queue_s),
            "ttft_s": _round(None if self.first_token is None else self.first_token - self.started),
            "total_s": _round(total),
        }
        if self.error_type:
            out["error_type"] = self.error_type
        return out


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(0.0, seconds), 4)


def message(fields: dict[str, Any]) -> str:
    """``request <id> done: status=200 prompt_tokens=… …`` (what a TEXT log shows)."""
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if k != "request_id" and v is not None)
    return f"request {fields['request_id']} done: {rest}"


def log_to(logger: logging.Logger) -> Callable[[dict[str, Any]], None]:
    """A sink for :class:`~serve_app.engine.runtime.EngineRuntime`: one INFO line per request."""

    def emit(fields: dict[str, Any]) -> None:
        if logger.isEnabledFor(logging.INFO):
            logger.info("%s", message(fields), extra={EXTRA_KEY: fields})

    return emit
