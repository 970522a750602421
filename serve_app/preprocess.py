"""Chat plan → :class:`~serve_app.prepared.PreparedPrompt`: the chat template plus every image and
video fetched, decoded and resized. Shared by the Serve preprocessor deployment and the batch job
(no Ray, no vLLM)."""

from __future__ import annotations

import logging

from serve_app.app_config import AppConfig
from serve_app.chat import ChatPlan
from serve_app.media.loader import LoadedImage, MediaLoader
from serve_app.model_source import resolve_model_path
from serve_app.prepared import PreparedPrompt, engine_video_metadata
from serve_app.prompting import load_chat_renderer

logger = logging.getLogger("serve_app.preprocess")


class PromptPreparer:
    def __init__(self, config: AppConfig) -> None:
        self._render = load_chat_renderer(resolve_model_path(config.model, files="tokenizer"))
        self._loader = MediaLoader(config.media)

    def warmup(self) -> None:
        """Import the decoders now (seconds) so the first media request does not pay for it. Best
        effort: a decoder that is missing fails the requests that need it, not the replica."""
        try:
            self._loader.warmup()
        except Exception as exc:  # noqa: BLE001
            logger.warning("media decoder warm-up failed (the first request will retry): %r", exc)

    async def prepare(self, plan: ChatPlan) -> PreparedPrompt:
        prompt = self._render(plan.template_messages)
        loaded = await self._loader.load(plan.media)  # decode work runs in the loader's threads
        prepared = PreparedPrompt(prompt=prompt)
        for item in loaded:
            if isinstance(item, LoadedImage):
                prepared.images.append(item.array)  # the decoder's HWC uint8 array, no PIL round trip
                prepared.image_uuids.append(item.uuid)
            else:
                prepared.videos.append((item.frames, engine_video_metadata(item.metadata)))
                prepared.video_uuids.append(item.uuid)
        return prepared
