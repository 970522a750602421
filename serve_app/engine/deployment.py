"""Engine deployment (GPU replicas): one vLLM ``AsyncLLM`` per replica, inside the replica's
placement group (bundles and strategy from :mod:`serve_app.engine.placement`, set by ``build_app``)."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator

from ray import serve

from serve_app.app_config import AppConfig
from serve_app.engine import request_log
from serve_app.engine.contract import Delta, EngineRequest
from serve_app.engine.runtime import EngineRuntime
from serve_app.preprocess.prepared import PreparedMedia


@serve.deployment(name="Engine")
class Engine:
    def __init__(self, config: AppConfig) -> None:
        # Serve's replica logger, as the ingress and the preprocessor use: its file, its JSON.
        self._runtime = EngineRuntime(config, request_log=request_log.log_to(logging.getLogger("ray.serve")))

    async def model_info(self) -> dict[str, Any]:
        return {"max_model_len": self._runtime.max_model_len}

    async def stats(self) -> dict[str, Any]:
        """This replica's counters, named by replica and node (the ingress asks every replica)."""
        import ray

        return {"replica_id": serve.get_replica_context().replica_tag,
                "node_id": ray.get_runtime_context().get_node_id(), **self._runtime.stats()}

    async def generate(self, request: EngineRequest, media: PreparedMedia | None = None) -> AsyncIterator[Delta]:
        """``media``: the preprocessor's output, passed as its own argument so that Serve resolves
        the DeploymentResponse the ingress hands over (it resolves top-level arguments only)."""
        async for delta in self._runtime.generate(request, media):
            yield delta

    async def check_health(self) -> None:
        await self._runtime.check_health()

    def __del__(self) -> None:
        runtime = getattr(self, "_runtime", None)
        if runtime is not None:
            runtime.shutdown()
