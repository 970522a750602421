"""Engine deployment (GPU replicas): one vLLM ``AsyncLLM`` per replica, inside the replica's
placement group (bundles and strategy from :mod:`serve_app.engine.placement`, set by ``build_app``)."""

from __future__ import annotations

from typing import Any, AsyncIterator

from ray import serve

from serve_app.app_config import AppConfig
from serve_app.engine.runtime import EngineRuntime
from serve_app.preprocess.prepared import PreparedPrompt, TextOnlyPrompt


@serve.deployment(name="Engine")
class Engine:
    def __init__(self, config: AppConfig) -> None:
        self._runtime = EngineRuntime(config)

    async def model_info(self) -> dict[str, Any]:
        return {"max_model_len": self._runtime.max_model_len}

    async def stats(self) -> dict[str, int]:
        return self._runtime.stats()

    async def generate(
        self,
        prompt: PreparedPrompt | TextOnlyPrompt,
        sampling: dict[str, Any],
        request_id: str,
        stream: bool,
        top_logprobs: int | None,
    ) -> AsyncIterator[dict[str, Any]]:
        async for delta in self._runtime.generate(prompt, sampling, request_id, stream, top_logprobs):
            yield delta

    async def check_health(self) -> None:
        await self._runtime.check_health()

    def __del__(self) -> None:
        runtime = getattr(self, "_runtime", None)
        if runtime is not None:
            runtime.shutdown()
