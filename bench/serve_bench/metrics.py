"""Per-request records and their aggregates (pure; no I/O)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence


@dataclass
class RequestRecord:
    """One request as the client saw it. Times in seconds on the client's monotonic clock."""

    index: int
    start: float
    ttft: float | None = None  # first chunk that carries a choice (the engine produced a token)
    e2e: float | None = None
    output_tokens: int | None = None  # usage.completion_tokens
    prompt_tokens: int | None = None  # usage.prompt_tokens
    chunks: int = 0
    ok: bool = False
    error: str | None = None
    body_hash: str | None = None  # sha256 of the request body, first 16 hex digits: which request this was
    chunk_times: list[float] = field(default_factory=list)  # seconds after start of each chunk with a choice
    user: int | None = None  # multi-turn workloads: the conversation and the turn in it
    turn: int | None = None

    def inter_chunk(self) -> list[float]:
        ts = self.chunk_times
        return [b - a for a, b in zip(ts, ts[1:])]

    @property
    def end(self) -> float | None:
        return None if self.e2e is None else self.start + self.e2e

    @property
    def tpot(self) -> float | None:
        return tpot(self.e2e, self.ttft, self.output_tokens)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tpot"] = self.tpot
        return d


def tpot(e2e: float | None, ttft: float | None, output_tokens: int | None) -> float | None:
    """Time per output token after the first: (e2e - ttft) / (tokens - 1); None with < 2 tokens."""
    if e2e is None or ttft is None or output_tokens is None or output_tokens < 2:
        return None
    return (e2e - ttft) / (output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default 'linear' method); None if empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def _dist(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    def s(v: float | None) -> float | None:
        return None if v is None else round(v * scale, 3)

    return {
        "mean": s(sum(values) / len(values)) if values else None,
        "p50": s(percentile(values, 50)),
        "p90": s(percentile(values, 90)),
        "p99": s(percentile(values, 99)),
        "max": s(max(values)) if values else None,
    }


@dataclass
class LevelResult:
    workload: str
    concurrency: int
    requests: int  # timed requests sent
    completed: int  # ok
    failed: int
    short: int  # ok but fewer output tokens than max_tokens (ignore_eos should prevent this)
    duration_s: float  # first timed request sent -> last timed request finished
    req_per_s: float
    out_tok_per_s: float
    ttft_ms: dict[str, float | None]
    tpot_ms: dict[str, float | None]
    e2e_ms: dict[str, float | None]
    prompt_tokens_mean: float | None
    output_tokens_mean: float | None
    client_cpu: float  # client process CPU seconds / wall seconds while the level ran (1.0 = one core)
    loop_lag_ms_p99: float | None  # the client's event-loop lag (high = the client itself is saturated)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(workload: str, concurrency: int, records: Iterable[RequestRecord], max_tokens: int,
              client_cpu: float, loop_lag_ms_p99: float | None = None,
              wall: tuple[float, float] | None = None) -> LevelResult:
    recs = list(records)
    ok = [r for r in recs if r.ok]
    failed = [r for r in recs if not r.ok]
    if wall is not None:
        t0, t1 = wall
    elif recs:
        t0 = min(r.start for r in recs)
        t1 = max((r.end for r in recs if r.end is not None), default=t0)
    else:
        t0 = t1 = 0.0
    duration = max(t1 - t0, 1e-9)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tpots = [t for t in (r.tpot for r in ok) if t is not None]
    e2es = [r.e2e for r in ok if r.e2e is not None]
    inter_chunk = [g for r in ok for g in r.inter_chunk()]
    chunk_counts = [r.chunks for r in ok]
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    outs = [r.output_tokens for r in ok if r.output_tokens is not None]
    errors: list[str] = []
    for r in failed:
        if r.error and r.error not in errors and len(errors) < 5:
            errors.append(r.error)
    return LevelResult(
        workload=workload,
        concurrency=concurrency,
        requests=len(recs),
        completed=len(ok),
        failed=len(failed),
        short=sum(1 for r in ok if (r.output_tokens or 0) < max_tokens),
        duration_s=round(duration, 4),
        req_per_s=round(len(ok) / duration, 4) if recs else 0.0,
        out_tok_per_s=round(out_tokens / duration, 2) if recs else 0.0,
        ttft_ms=_dist(ttfts),
        tpot_ms=_dist(tpots),
        e2e_ms=_dist(e2es),
        prompt_tokens_mean=round(sum(prompts) / len(prompts), 1) if prompts else None,
        output_tokens_mean=round(sum(outs) / len(outs), 2) if outs else None,
        client_cpu=round(client_cpu, 3),
        loop_lag_ms_p99=None if loop_lag_ms_p99 is None else round(loop_lag_ms_p99, 2),
        errors=errors,
        extra={"inter_chunk_ms": _dist(inter_chunk),
               "chunks_mean": round(sum(chunk_counts) / len(chunk_counts), 2) if chunk_counts else None},
    )


def ratio(app: float | None, base: float | None) -> float | None:
    if app is None or base is None or base == 0:
        return None
    return app / base
