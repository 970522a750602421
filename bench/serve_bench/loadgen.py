"""Async closed-loop load generator for OpenAI-compatible streaming chat completions (aiohttp).

``concurrency`` workers each send their next pre-serialized request as soon as their previous one
finished, until the level's fixed request count is used up (or its time cap passes: no new requests
start after it, in-flight ones finish). Warm-up requests run first at the same concurrency and are
not recorded.

Per request: TTFT = first SSE chunk that carries a choice (both servers send their first chunk only
when the engine produced the first token); e2e = [DONE] (or end of stream); output tokens from the
final ``usage`` chunk (``stream_options.include_usage``); TPOT = (e2e - TTFT) / (tokens - 1).
The client's own CPU use (process CPU time / wall time) and event-loop lag are recorded per level,
so a ratio is only trusted where the client was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Sequence

from .metrics import LevelResult, RequestRecord, aggregate, percentile

HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


@dataclass
class LoadConfig:
    base_url: str  # http://127.0.0.1:PORT
    max_tokens: int
    request_timeout_s: float = 600.0
    max_level_s: float | None = None  # no new requests after this many seconds of a level


async def one_request(session, url: str, body: bytes, index: int, timeout_s: float) -> RequestRecord:
    import aiohttp

    rec = RequestRecord(index=index, start=time.perf_counter())
    try:
        async with session.post(url, data=body, headers=HEADERS,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                rec.error = f"HTTP {resp.status}: {text}"
                rec.e2e = time.perf_counter() - rec.start
                return rec
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                obj = json.loads(payload)
                if obj.get("error"):
                    err = obj["error"]
                    rec.error = "in-stream error: " + (err.get("message", str(err)) if isinstance(err, dict)
                                                       else str(err))[:300]
                    continue
                if obj.get("choices"):
                    rec.chunks += 1
                    if rec.ttft is None:
                        rec.ttft = time.perf_counter() - rec.start
                usage = obj.get("usage")
                if usage:
                    rec.output_tokens = usage.get("completion_tokens")
                    rec.prompt_tokens = usage.get("prompt_tokens")
        rec.e2e = time.perf_counter() - rec.start
        if rec.error is None and rec.output_tokens is None:
            rec.error = "no usage chunk in the stream"
        rec.ok = rec.error is None and rec.ttft is not None
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as a failure
        rec.e2e = time.perf_counter() - rec.start
        rec.error = f"{type(exc).__name__}: {exc}"[:300]
    return rec


class _LagMonitor:
    """Samples the event loop's scheduling delay (a saturated client shows up here first)."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags.append(time.perf_counter() - t - self.period)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float | None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        p = percentile(self.lags, 99)
        return None if p is None else p * 1000.0


async def _closed_loop(session, url: str, bodies: Sequence[bytes], concurrency: int, timeout_s: float,
                       deadline: float | None) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    it = iter(range(len(bodies)))

    async def worker() -> None:
        for i in it:  # shared iterator: each index is taken by exactly one worker
            if deadline is not None and time.perf_counter() >= deadline:
                return
            records.append(await one_request(session, url, bodies[i], i, timeout_s))

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(bodies))))))
    return records


async def run_level_async(cfg: LoadConfig, workload: str, concurrency: int, warmup: Sequence[bytes],
                          timed: Sequence[bytes]) -> tuple[LevelResult, list[RequestRecord]]:
    import aiohttp

    url = cfg.base_url.rstrip("/") + "/v1/chat/completions"
    conn = aiohttp.TCPConnector(limit=max(concurrency, 1) + 4, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=conn, read_bufsize=1 << 20) as session:
        warm = await _closed_loop(session, url, warmup, concurrency, cfg.request_timeout_s, None) if warmup else []
        lag = _LagMonitor()
        lag.start()
        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline = None if cfg.max_level_s is None else t0 + cfg.max_level_s
        recs = await _closed_loop(session, url, timed, concurrency, cfg.request_timeout_s, deadline)
        t1 = time.perf_counter()
        cpu1 = time.process_time()
        lag_p99 = await lag.stop()
    res = aggregate(workload, concurrency, recs, cfg.max_tokens, client_cpu=(cpu1 - cpu0) / max(t1 - t0, 1e-9),
                    loop_lag_ms_p99=lag_p99, wall=(t0, t1))
    res.extra["warmup_requests"] = len(warm)
    res.extra["warmup_failed"] = sum(1 for r in warm if not r.ok)
    res.extra["not_started_deadline"] = len(timed) - len(recs)
    if warm and not any(r.ok for r in warm):
        res.errors = (res.errors + [f"warm-up: {warm[0].error}"])[:6]
    return res, recs


def run_level(cfg: LoadConfig, workload: str, concurrency: int, warmup: Sequence[bytes],
              timed: Sequence[bytes]) -> tuple[LevelResult, list[RequestRecord]]:
    return asyncio.run(run_level_async(cfg, workload, concurrency, warmup, timed))


async def _single(base_url: str, body: bytes, timeout_s: float) -> RequestRecord:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return await one_request(session, base_url.rstrip("/") + "/v1/chat/completions", body, -1, timeout_s)


def single_request(base_url: str, body: bytes, timeout_s: float = 600.0) -> RequestRecord:
    return asyncio.run(_single(base_url, body, timeout_s))
