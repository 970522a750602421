"""Preprocessor deployment (CPU replicas): chat template + media fetch/decode/resize.

Its return value (a :class:`~serve_app.preprocess.prepared.PreparedPrompt` holding numpy arrays) goes to the
engine replica through Ray's object store: the ingress passes the DeploymentResponse straight into
the engine call and never touches the pixels.
"""

from __future__ import annotations

from ray import serve

from serve_app.app_config import AppConfig
from serve_app.api.chat import ChatPlan
from serve_app.preprocess.prepared import PreparedPrompt
from serve_app.preprocess.preparer import PromptPreparer


@serve.deployment(name="Preprocessor", ray_actor_options={"num_cpus": 1})
class Preprocessor:
    def __init__(self, config: AppConfig) -> None:
        self._preparer = PromptPreparer(config)
        self._preparer.warmup()

    async def prepare(self, plan: ChatPlan) -> PreparedPrompt:
        return await self._preparer.prepare(plan)
