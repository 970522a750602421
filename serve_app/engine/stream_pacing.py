"""Stream pacing (pure): merge an engine replica's per-token deltas into at most one message per
interval, without delaying the first token or the last.

Why: every delta the engine replica yields is one Serve streaming message (engine replica →
ingress → proxy, three Python event loops). One message per token per request saturates those loops
long before the GPU (measured on an H100: at 48 concurrent streams TPOT was 3× ``vllm serve``'s).
Pacing sends a request's first delta at once, then merges what arrives until ``interval_s`` has
passed since the last send, and always sends the final delta as soon as it arrives — so
time-to-first-token and end-to-end latency are unchanged, and a request sends ≤ 1/interval
messages per second however fast it decodes.
"""

from __future__ import annotations

import time
from typing import AsyncIterator, Callable

from serve_app.engine.contract import Delta


async def paced(
    deltas: AsyncIterator[Delta],
    interval_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Delta]:
    """Re-yield ``deltas`` merged: the first at once, the final (``finished``) at once, otherwise at
    most one per ``interval_s``. A merged delta waits at most until the next delta arrives after the
    interval; nothing is dropped. ``interval_s <= 0`` passes every delta through."""
    if interval_s <= 0:
        async for d in deltas:
            yield d
        return
    pending: Delta | None = None
    last_sent: float | None = None
    async for d in deltas:
        pending = d if pending is None else pending.merge(d)
        now = clock()
        if last_sent is None or pending.finished or now - last_sent >= interval_s:
            yield pending
            pending, last_sent = None, now
    if pending is not None:  # the source ended without a finished delta (cannot happen with vLLM; be safe)
        yield pending
