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
import hashlib
import json
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

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

    rec = RequestRecord(index=index, start=time.perf_counter(), body_hash=body_hash(body))
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
                    now = time.perf_counter() - rec.start
                    rec.chunks += 1
                    rec.chunk_times.append(now)
                    if rec.ttft is None:
                        rec.ttft = now
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


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


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


# ------------------------------------------------------------------------------ time-based load shapes
# A level = ramp-up (workers start at jittered times; nothing recorded), then a fixed measurement
# window: requests that START inside it are recorded and the rates are over the window's length.
# After the window no new request starts; in-flight ones get ``drain_s`` to finish, then are cancelled
# (counted as ``cut``), so a level never overruns by more than that.

@dataclass
class TimedLevel:
    ramp_s: float = 10.0
    window_s: float = 60.0
    drain_s: float = 30.0
    jitter_s: float | None = None  # worker start offsets uniform in [0, jitter_s]; default ramp_s / 2
    seed: int = 0


Conversation = Sequence[tuple[int, int, bytes]]  # (user, turn, body) in turn order


def _summarize_timed(workload: str, concurrency: int, recs: list[RequestRecord], max_tokens: int,
                     w0: float, w1: float, client_cpu: float, lag_p99: float | None, cut: int,
                     exhausted: bool) -> tuple[LevelResult, list[RequestRecord]]:
    inside = [r for r in recs if w0 <= r.start < w1]
    res = aggregate(workload, concurrency, inside, max_tokens, client_cpu=client_cpu, loop_lag_ms_p99=lag_p99,
                    wall=(w0, w1))
    ramp = [r for r in recs if r.start < w0]
    res.extra.update(mode="closed-timed", window_s=round(w1 - w0, 2), ramp_requests=len(ramp),
                     ramp_failed=sum(1 for r in ramp if not r.ok and r.e2e is not None),
                     cut_after_window=cut, bodies_exhausted=exhausted)
    first_ramp_error = next((r.error for r in ramp if r.error), None)
    if first_ramp_error and len(res.errors) < 6:
        res.errors.append(f"ramp: {first_ramp_error}")
    return res, inside


async def _timed(cfg: LoadConfig, level: TimedLevel, concurrency: int,
                 job: Callable[..., Awaitable[None]]) -> tuple[list[RequestRecord], float, float, float, float | None, int]:
    """Run ``job(session, url, stop_at)`` in ``concurrency`` workers; returns records and the window."""
    import aiohttp

    url = cfg.base_url.rstrip("/") + "/v1/chat/completions"
    conn = aiohttp.TCPConnector(limit=max(concurrency, 1) + 4, ttl_dns_cache=300)
    rng = random.Random(level.seed)
    jitter = level.ramp_s / 2 if level.jitter_s is None else level.jitter_s
    async with aiohttp.ClientSession(connector=conn, read_bufsize=1 << 20) as session:
        lag = _LagMonitor()
        lag.start()
        t0 = time.perf_counter()
        w0, w1 = t0 + level.ramp_s, t0 + level.ramp_s + level.window_s
        cpu0 = time.process_time()
        records: list[RequestRecord] = []

        async def worker(offset: float) -> None:
            await asyncio.sleep(offset)
            await job(session, url, w1, records)

        tasks = [asyncio.create_task(worker(rng.uniform(0, jitter))) for _ in range(max(1, concurrency))]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, w1 + level.drain_s - time.perf_counter()))
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        cut = sum(1 for r in records if r.e2e is None)
        cpu = (time.process_time() - cpu0) / max(time.perf_counter() - t0, 1e-9)
        lag_p99 = await lag.stop()
    return records, w0, w1, cpu, lag_p99, cut


def _run_timed_sequences(cfg: LoadConfig, workload: str, concurrency: int,
                         sequences: Sequence[Sequence[tuple[int, int | None, int | None, bytes]]],
                         level: TimedLevel) -> tuple[LevelResult, list[RequestRecord]]:
    """Each worker takes the next sequence of (index, user, turn, body) and sends them one after the
    other (a conversation's turns; a plain workload's sequences have one request each)."""
    it = iter(sequences)
    exhausted = False

    async def job(session, url, stop_at, records):
        nonlocal exhausted
        while time.perf_counter() < stop_at:
            seq = next(it, None)
            if seq is None:
                exhausted = True
                return
            for index, user, turn, body in seq:
                if time.perf_counter() >= stop_at:
                    return
                pos = len(records)
                # stays in the list (e2e None, counted as cut) if the drain cancels it
                records.append(RequestRecord(index=index, start=time.perf_counter(), user=user, turn=turn))
                done = await one_request(session, url, body, index, cfg.request_timeout_s)
                done.user, done.turn = user, turn
                records[pos] = done

    async def main():
        return await _timed(cfg, level, concurrency, job)

    recs, w0, w1, cpu, lag, cut = asyncio.run(main())
    return _summarize_timed(workload, concurrency, recs, cfg.max_tokens, w0, w1, cpu, lag, cut, exhausted)


def run_timed_closed(cfg: LoadConfig, workload: str, concurrency: int, bodies: Sequence[bytes],
                     level: TimedLevel) -> tuple[LevelResult, list[RequestRecord]]:
    """Closed loop for a fixed time: each worker sends its next request when its previous one ends."""
    return _run_timed_sequences(cfg, workload, concurrency, [[(i, None, None, b)] for i, b in enumerate(bodies)], level)


def run_timed_conversations(cfg: LoadConfig, workload: str, concurrency: int, conversations: Sequence[Conversation],
                            level: TimedLevel) -> tuple[LevelResult, list[RequestRecord]]:
    """Closed loop over users: each worker plays one conversation turn after turn, then the next user."""
    seqs = [[(user * 1000 + turn, user, turn, body) for user, turn, body in conv] for conv in conversations]
    return _run_timed_sequences(cfg, workload, concurrency, seqs, level)


def poisson_arrivals(rate: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets (s) of a Poisson process of ``rate`` requests/s over ``duration_s``."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


def run_open_loop(cfg: LoadConfig, workload: str, rate: float, bodies: Sequence[bytes], level: TimedLevel,
                  max_in_flight: int = 512) -> tuple[LevelResult, list[RequestRecord]]:
    """Open loop: requests arrive as a Poisson process whatever the server does (ramp, then the window).
    Arrivals that find ``max_in_flight`` requests open are counted as ``dropped`` (the client's limit)."""
    import aiohttp

    arrivals = poisson_arrivals(rate, level.ramp_s + level.window_s, level.seed)

    async def main():
        url = cfg.base_url.rstrip("/") + "/v1/chat/completions"
        conn = aiohttp.TCPConnector(limit=max_in_flight + 4, ttl_dns_cache=300)
        records: list[RequestRecord] = []
        dropped = 0
        exhausted = False
        async with aiohttp.ClientSession(connector=conn, read_bufsize=1 << 20) as session:
            lag = _LagMonitor()
            lag.start()
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            tasks: set[asyncio.Task] = set()

            async def send(i: int) -> None:
                pos = len(records)
                records.append(RequestRecord(index=i, start=time.perf_counter()))
                records[pos] = await one_request(session, url, bodies[i], i, cfg.request_timeout_s)

            for k, at in enumerate(arrivals):
                if k >= len(bodies):
                    exhausted = True
                    break
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= max_in_flight:
                    dropped += 1
                    continue
                task = asyncio.create_task(send(k))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            w0, w1 = t0 + level.ramp_s, t0 + level.ramp_s + level.window_s
            if tasks:
                _, pending = await asyncio.wait(set(tasks), timeout=max(0.0, w1 + level.drain_s - time.perf_counter()))
                for t in pending:
                    t.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
            cpu = (time.process_time() - cpu0) / max(time.perf_counter() - t0, 1e-9)
            lag_p99 = await lag.stop()
        cut = sum(1 for r in records if r.e2e is None)
        return records, w0, w1, cpu, lag_p99, cut, dropped, exhausted

    recs, w0, w1, cpu, lag, cut, dropped, exhausted = asyncio.run(main())
    res, inside = _summarize_timed(workload, 0, recs, cfg.max_tokens, w0, w1, cpu, lag, cut, exhausted)
    res.extra.update(mode="open-poisson", rate=rate, dropped=dropped,
                     offered=sum(1 for a in arrivals if level.ramp_s <= a < level.ramp_s + level.window_s))
    return res, inside
