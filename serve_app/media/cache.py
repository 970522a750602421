"""A bounded LRU cache (by bytes) of decoded media, with optional per-entry expiry, plus single-flight.

Keys are content-addressed (sha256 of the media bytes + the options that change the output) or,
for URLs and local files, source-addressed with a TTL so a repeated URL is not even fetched again.
``get_or_compute`` makes concurrent requests for the same key share one computation.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ByteLRU(Generic[T]):
    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, tuple[T, int, float | None]] = OrderedDict()
        self._bytes = 0
        self._clock = clock
        self._inflight: dict[str, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> T | None:
        item = self._d.get(key)
        if item is None:
            return None
        value, size, expires = item
        if expires is not None and self._clock() >= expires:
            self._drop(key)
            return None
        self._d.move_to_end(key)
        return value

    def put(self, key: str, value: T, size: int, ttl: float | None = None) -> None:
        if self.max_bytes <= 0 or size > self.max_bytes:
            return
        if key in self._d:
            self._drop(key)
        self._d[key] = (value, size, None if ttl is None else self._clock() + ttl)
        self._bytes += size
        while self._bytes > self.max_bytes and self._d:
            self._drop(next(iter(self._d)))

    def _drop(self, key: str) -> None:
        _, size, _ = self._d.pop(key)
        self._bytes -= size

    def clear(self) -> None:
        self._d.clear()
        self._bytes = 0

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """Cached value, else the result of an in-flight computation of ``key``, else ``compute()``.

        ``compute`` is responsible for ``put``-ting what it wants cached; errors are not cached.
        """
        v = self.get(key)
        if v is not None:
            self.hits += 1
            return v
        return await self.single_flight(key, compute)

    async def single_flight(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``compute()`` unless a computation for ``key`` is already in flight; then share it."""
        fut = self._inflight.get(key)
        if fut is not None:
            self.hits += 1
            return await asyncio.shield(fut)
        self.misses += 1
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            v = await compute()
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # mark retrieved: waiters (if any) re-raise it
            raise
        else:
            if not fut.done():
                fut.set_result(v)
            return v
        finally:
            self._inflight.pop(key, None)
