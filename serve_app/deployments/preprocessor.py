"""Preprocessor deployment (CPU replicas): chat template + media fetch/decode/resize.

Its return value (a :class:`~serve_app.prepared.PreparedPrompt` holding numpy arrays) goes to the
engine replica through Ray's object store: the ingress passes the DeploymentResponse straight into
the engine call and never touches the pixels.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

from serve_app.app_config import AppConfig
from serve_app.chat import ChatPlan
from serve_app.media.loader import LoadedImage, MediaLoader
from serve_app.model_source import resolve_model_path
from serve_app.prepared import PreparedPrompt
from serve_app.prompting import load_chat_renderer

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Preprocessor", ray_actor_options={"num_cpus": 1})
class Preprocessor:
    def __init__(self, config: AppConfig) -> None:
        self._config = config
        self._render = load_chat_renderer(resolve_model_path(config.model))
        self._loader = MediaLoader(config.media)

    async def prepare(self, plan: ChatPlan) -> PreparedPrompt:
        # Template rendering is cheap; media loading runs its decode work in threads.
        prompt = self._render(plan.template_messages)
        loaded = await self._loader.load(plan.media)
        prepared = PreparedPrompt(prompt=prompt)
        for item in loaded:
            if isinstance(item, LoadedImage):
                prepared.images.append(np.asarray(item.image))
                prepared.image_uuids.append(item.uuid)
            else:
                prepared.videos.append((item.frames, item.metadata))
                prepared.video_uuids.append(item.uuid)
        return prepared

    async def check_health(self) -> None:
        await asyncio.sleep(0)
