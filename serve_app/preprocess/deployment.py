"""Preprocessor deployment (CPU replicas): media fetch/decode/resize.

Its return value (a :class:`~serve_app.preprocess.prepared.PreparedMedia` holding numpy arrays)
goes to the engine replica through Ray's object store: the ingress passes the DeploymentResponse
straight into the engine call and never touches the pixels.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from typing import Callable

from ray import serve

from serve_app.app_config import AppConfig
from serve_app.media.spec import MediaSpec
from serve_app.media.token_budget import TokenBudget
from serve_app.observability import metrics
from serve_app.preprocess.prepared import PreparedMedia
from serve_app.preprocess.preparer import MediaPreparer

logger = logging.getLogger("ray.serve")  # Serve's replica log (JSON in production), with its request_id


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


@serve.deployment(name="Preprocessor", ray_actor_options={"num_cpus": 1})
class Preprocessor:
    def __init__(self, config: AppConfig) -> None:
        self._preparer = MediaPreparer(config)
        self._preparer.warmup()
        # glibc keeps what the decoders free in its per-thread arenas: after three 12 MP images a
        # replica stayed ~300 MB above its baseline for good (tests/test_e2e_soak.py). malloc_trim
        # hands it back (0.2 ms when there is nothing to return, ~40 ms for 300 MB), in a thread
        # whenever the replica has no media request left, so no response waits for it.
        self._trim = _malloc_trim()
        self._in_flight = 0

    async def prepare(self, media: list[MediaSpec], request_id: str | None = None,
                      sent_at: float | None = None, token_budget: TokenBudget | None = None) -> PreparedMedia:
        """``request_id`` (for log lines), ``sent_at`` (``time.time()`` at the ingress, for the
        preprocess_queue metric) and ``token_budget`` (what the media may take of the context) are
        the ingress's."""
        if sent_at is not None:
            metrics.observe_stage("preprocess_queue", time.time() - sent_at)
        self._in_flight += 1
        try:
            return await self._preparer.prepare(media, request_id=request_id, token_budget=token_budget)
        except Exception as exc:
            # The reason's class only: a media error's message may hold a URL, a path or data.
            logger.info("request %s: media refused (%s)", request_id, metrics.media_error_reason(exc))
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0 and self._trim is not None:
                asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
