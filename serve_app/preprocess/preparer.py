"""A chat plan's media → :class:`~serve_app.preprocess.prepared.PreparedMedia`: every image and
video fetched, decoded and resized. Shared by the Serve preprocessor deployment and the batch job
(no Ray, no vLLM)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from serve_app.app_config import AppConfig
from serve_app.errors import DeadlineExceededError
from serve_app.media.loader import LoadedImage, MediaLoader
from serve_app.media.spec import MediaSpec
from serve_app.media.token_budget import TokenBudget
from serve_app.observability import metrics
from serve_app.preprocess.prepared import PreparedMedia, engine_video_metadata

logger = logging.getLogger("serve_app.preprocess.preparer")


class MediaPreparer:
    def __init__(self, config: AppConfig) -> None:
        self._loader = MediaLoader(config.media)
        self._timeout_s = config.media.prepare_timeout_s
        self._cache_counter = metrics.CacheCounter()

    def warmup(self) -> None:
        """Import the decoders now (seconds) so the first media request does not pay for it. Best
        effort: a decoder that is missing fails the requests that need it, not the replica."""
        try:
            self._loader.warmup()
        except Exception as exc:  # noqa: BLE001
            logger.warning("media decoder warm-up failed (the first request will retry): %r", exc)

    async def prepare(self, media: Sequence[MediaSpec], request_id: str | None = None,
                      token_budget: TokenBudget | None = None) -> PreparedMedia:
        """``token_budget``: the request's (:attr:`ValidatedRequest.token_budget`), checked against
        the items' declared sizes before any decode."""
        t0 = time.monotonic()
        # A deadline for the whole request: on expiry (or when the caller cancels, e.g. the client
        # went away) the loader's tasks are cancelled, so no fetch continues and no new decode starts.
        try:
            loaded = await asyncio.wait_for(self._loader.load(media, token_budget), self._timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceededError(
                f"the request's media could not be fetched and decoded within {self._timeout_s:g} s "
                "(media.prepare_timeout_s)") from None
        finally:
            self._cache_counter.report(self._loader.cache)
        metrics.observe_stage("preprocess", time.monotonic() - t0)
        prepared = PreparedMedia()
        for item in loaded:
            if isinstance(item, LoadedImage):
                prepared.images.append(item.array)  # the decoder's HWC uint8 array, no PIL round trip
                prepared.image_uuids.append(item.uuid)
            else:
                prepared.videos.append((item.frames, engine_video_metadata(item.metadata)))
                prepared.video_uuids.append(item.uuid)
        prepared.ready_at = time.time()
        logger.debug("request %s: %d image(s), %d video(s) prepared in %.3fs", request_id, len(prepared.images),
                     len(prepared.videos), time.monotonic() - t0)
        return prepared
