"""One chat request's metrics, seen from the ingress (pure; records through
:mod:`serve_app.observability.metrics`): status, end-to-end latency, time to first token, time per
output token after the first, prompt and completion tokens."""

from __future__ import annotations

import time
from typing import Callable

from serve_app.engine.contract import Delta
from serve_app.observability import metrics


class RequestObserver:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self._first_token: float | None = None
        self._last_token: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._done = False

    def on_delta(self, delta: Delta) -> None:
        tokens = sum(c.num_tokens for c in delta.choices)
        if tokens:
            now = self._clock()
            if self._first_token is None:
                self._first_token = now
            self._last_token = now
        self.completion_tokens += tokens
        self.prompt_tokens = delta.prompt_tokens or self.prompt_tokens

    def finish(self, status: int) -> None:
        """Record the request once (later calls do nothing)."""
        if self._done:
            return
        self._done = True
        now = self._clock()
        metrics.count_request(status)
        metrics.observe_stage("e2e", now - self.started)
        if status == 200:
            if self._first_token is not None:
                metrics.observe_stage("ttft", self._first_token - self.started)
                if self.completion_tokens > 1 and self._last_token is not None:
                    metrics.observe_stage("tpot", (self._last_token - self._first_token) / (self.completion_tokens - 1))
            metrics.count_tokens("prompt", self.prompt_tokens)
            metrics.count_tokens("completion", self.completion_tokens)
