"""Preprocessor deployment (CPU replicas): media fetch/decode/resize.

Its return value (a :class:`~serve_app.preprocess.prepared.PreparedMedia` holding numpy arrays)
goes to the engine replica through Ray's object store: the ingress passes the DeploymentResponse
straight into the engine call and never touches the pixels.
"""

from __future__ import annotations

import logging
import time

from ray import serve

from serve_app.app_config import AppConfig
from serve_app.media.spec import MediaSpec
from serve_app.media.token_budget import TokenBudget
from serve_app.observability import metrics
from serve_app.preprocess.prepared import PreparedMedia
from serve_app.preprocess.preparer import MediaPreparer

logger = logging.getLogger("ray.serve")  # Serve's replica log (JSON in production), with its request_id


@serve.deployment(name="Preprocessor", ray_actor_options={"num_cpus": 1})
class Preprocessor:
    def __init__(self, config: AppConfig) -> None:
        self._preparer = MediaPreparer(config)
        self._preparer.warmup()

    async def prepare(self, media: list[MediaSpec], request_id: str | None = None,
                      sent_at: float | None = None, token_budget: TokenBudget | None = None) -> PreparedMedia:
        """``request_id`` (for log lines), ``sent_at`` (``time.time()`` at the ingress, for the
        preprocess_queue metric) and ``token_budget`` (what the media may take of the context) are
        the ingress's."""
        if sent_at is not None:
            metrics.observe_stage("preprocess_queue", time.time() - sent_at)
        try:
            return await self._preparer.prepare(media, request_id=request_id, token_budget=token_budget)
        except Exception as exc:
            # The reason's class only: a media error's message may hold a URL, a path or data.
            logger.info("request %s: media refused (%s)", request_id, metrics.media_error_reason(exc))
            raise
