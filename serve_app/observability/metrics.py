"""The application's metrics, through Ray's metrics API (``ray.util.metrics``).

Every Ray node exports them with Ray's own on its metrics export port (``make serve``:
http://127.0.0.1:8080/metrics), prefixed ``ray_``: ``serve_app_stage_seconds`` becomes
``ray_serve_app_stage_seconds_bucket`` etc. One module names them all (the dashboard in
``cluster/grafana-dashboard.json`` and ``tests/test_e2e_observability.py`` read :data:`SERIES`).

Recording is pure bookkeeping here: a *sink* turns it into Ray metrics (:class:`RaySink`, made on
first use, recording only inside a Ray process) or into a list (tests: :func:`use_sink`).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

# Latency stages (label ``stage`` of serve_app_stage_seconds).
STAGES = (
    "media_fetch",          # one media item's bytes: http(s), data: URI or local file
    "media_decode",         # one item decoded (and waiting for a decode thread), its resizes excluded
    "media_resize",         # one item's resizes to qwen-vl-utils' sizes (every frame of a video, summed)
    "preprocess_queue",     # ingress dispatch → the preprocessor replica starts the request
    "preprocess",           # the preprocessor's whole prepare() of one request
    "engine_queue",         # ingress dispatch (or media ready) → the engine replica starts the request
    "ttft",                 # ingress: request received → first token
    "tpot",                 # ingress: mean time per output token after the first
    "e2e",                  # ingress: request received → last byte (or error)
)
TOKEN_KINDS = ("prompt", "completion", "image", "video")

STAGE_SECONDS = "serve_app_stage_seconds"
REQUESTS = "serve_app_requests_total"
TOKENS = "serve_app_tokens_total"
MEDIA_BYTES = "serve_app_media_fetched_bytes_total"
MEDIA_CACHE = "serve_app_media_cache_total"
MEDIA_ERRORS = "serve_app_media_errors_total"

# name → (kind, description, tag keys)
SERIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    STAGE_SECONDS: ("histogram", "Latency of one request stage, seconds", ("stage",)),
    REQUESTS: ("counter", "Chat completion requests answered, by HTTP status code", ("status",)),
    TOKENS: ("counter", "Tokens processed, by kind (prompt, completion, image, video)", ("kind",)),
    MEDIA_BYTES: ("counter", "Media bytes fetched, by source kind (http, data, file)", ("source",)),
    MEDIA_CACHE: ("counter", "Media cache lookups, by result (hit, miss)", ("result",)),
    MEDIA_ERRORS: ("counter", "Media items refused, by reason", ("reason",)),
}
# Seconds: 1 ms … 5 min.
LATENCY_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                      120.0, 300.0]


class Sink(Protocol):
    def observe(self, name: str, value: float, tags: dict[str, str]) -> None: ...
    def inc(self, name: str, value: float, tags: dict[str, str]) -> None: ...


class RaySink:
    """Ray metrics, created on first use in this process; nothing is recorded outside Ray."""

    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _metric(self, name: str):
        m = self._metrics.get(name)
        if m is None:
            with self._lock:
                m = self._metrics.get(name)
                if m is None:
                    from ray.util import metrics

                    kind, desc, tags = SERIES[name]
                    if kind == "histogram":
                        m = metrics.Histogram(name, description=desc, boundaries=LATENCY_BOUNDARIES, tag_keys=tags)
                    else:
                        m = metrics.Counter(name, description=desc, tag_keys=tags)
                    self._metrics[name] = m
        return m

    @staticmethod
    def _active() -> bool:
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is a dependency
            return False
        return ray.is_initialized()

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        if self._active():
            self._metric(name).observe(value, tags=tags)

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        if value > 0 and self._active():
            self._metric(name).inc(value, tags=tags)


class ListSink:
    """Records (kind, name, value, tags) tuples: for unit tests."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, float, dict[str, str]]] = []

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.records.append(("observe", name, value, dict(tags)))

    def inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        if value > 0:
            self.records.append(("inc", name, value, dict(tags)))

    def total(self, name: str, **tags: str) -> float:
        return sum(v for _, n, v, t in self.records if n == name and all(t.get(k) == x for k, x in tags.items()))

    def count(self, name: str, **tags: str) -> int:
        return sum(1 for _, n, _v, t in self.records if n == name and all(t.get(k) == x for k, x in tags.items()))


_sink: Sink = RaySink()


def use_sink(sink: Sink) -> Sink:
    """Replace the process's sink (tests); returns the previous one."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def observe_stage(stage: str, seconds: float) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    _sink.observe(STAGE_SECONDS, max(0.0, float(seconds)), {"stage": stage})


def count_request(status: int) -> None:
    _sink.inc(REQUESTS, 1, {"status": str(int(status))})


def count_tokens(kind: str, n: int) -> None:
    if kind not in TOKEN_KINDS:
        raise ValueError(f"unknown token kind {kind!r}")
    _sink.inc(TOKENS, n, {"kind": kind})


def count_media_bytes(source: str, n: int) -> None:
    _sink.inc(MEDIA_BYTES, n, {"source": source})


def count_media_cache(hits: int, misses: int) -> None:
    _sink.inc(MEDIA_CACHE, hits, {"result": "hit"})
    _sink.inc(MEDIA_CACHE, misses, {"result": "miss"})


def count_media_error(reason: str) -> None:
    _sink.inc(MEDIA_ERRORS, 1, {"reason": reason})


def media_error_reason(exc: BaseException) -> str:
    """A small, fixed set of labels for a media failure (never the message: it may hold a URL)."""
    from serve_app.media.errors import AddressRefused, MediaTooLarge

    if isinstance(exc, AddressRefused):
        return "address_refused"
    if isinstance(exc, MediaTooLarge):
        return "too_large"
    text = str(exc).lower()
    for needle, reason in (("timed out", "timeout"), ("timeout", "timeout"), ("http status", "http_status"),
                           ("status code", "http_status"), ("not under", "path_refused"),
                           ("cannot decode", "undecodable"), ("cannot identify", "undecodable"),
                           ("unsupported", "unsupported")):
        if needle in text:
            return reason
    return "invalid"


class CacheCounter:
    """Reports a ByteLRU's hit/miss counters as metric increments (the delta since the last report)."""

    def __init__(self) -> None:
        self._hits = 0
        self._misses = 0

    def report(self, cache: Any) -> None:
        hits, misses = int(cache.hits), int(cache.misses)
        count_media_cache(hits - self._hits, misses - self._misses)
        self._hits, self._misses = hits, misses
