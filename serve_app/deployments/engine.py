"""Engine deployment (GPU replicas): one vLLM ``AsyncLLM`` per replica, inside the replica's
placement group (see :mod:`serve_app.placement`)."""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator

from ray import serve

from serve_app.app_config import AppConfig
from serve_app.engine_args import build_engine_kwargs
from serve_app.errors import EngineError, InvalidRequestError
from serve_app.model_source import resolve_model_path
from serve_app.outputs import delta_from_output
from serve_app.placement import engine_placement
from serve_app.prepared import PreparedPrompt, TextOnlyPrompt
from serve_app.prompting import chat_renderer

logger = logging.getLogger("ray.serve")


@serve.deployment(name="Engine")
class Engine:
    def __init__(self, config: AppConfig) -> None:
        import ray
        from ray.util.placement_group import get_current_placement_group
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        t0 = time.monotonic()
        self._config = config
        model_path = resolve_model_path(config.model)
        if config.engine.awq_preflight:
            from serve_app.awq.preflight import require_tp_compatible

            require_tp_compatible(model_path, config.engine.tensor_parallel_size)
        placement = engine_placement(config.engine)
        kwargs = build_engine_kwargs(config, model_path, placement)
        try:
            engine_args = AsyncEngineArgs(**kwargs)
        except TypeError as exc:
            raise ValueError(f"args.engine.engine_kwargs: not accepted by this vLLM version: {exc}") from None
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        if placement.executor_backend == "ray":
            # Hand vLLM the replica's own placement group: its Ray workers take bundles 0..N-1.
            pg = get_current_placement_group()
            if pg is None:
                raise RuntimeError("engine replica is not in a placement group; deploy it through build_app")
            vllm_config.parallel_config.placement_group = pg
        self._engine = AsyncLLM.from_vllm_config(
            vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            enable_log_requests=False,
            disable_log_stats=False,
        )
        self._max_model_len = vllm_config.model_config.max_model_len
        # The defaults `vllm serve` applies from generation_config.json (temperature, top_p, ...).
        self._default_sampling = dict(vllm_config.model_config.get_diff_sampling_param() or {})
        self._render = chat_renderer(self._load_tokenizer(model_path))
        logger.info(
            "engine ready in %.1fs: model=%s tp=%d pp=%d node=%s defaults=%s",
            time.monotonic() - t0, model_path, config.engine.tensor_parallel_size,
            config.engine.pipeline_parallel_size, ray.get_runtime_context().get_node_id(),
            self._default_sampling,
        )

    @staticmethod
    def _load_tokenizer(model_path: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_path)

    async def model_info(self) -> dict[str, Any]:
        return {"max_model_len": self._max_model_len}

    async def generate(
        self,
        prompt: PreparedPrompt | TextOnlyPrompt,
        sampling: dict[str, Any],
        request_id: str,
        stream: bool,
        top_logprobs: int | None,
    ) -> AsyncIterator[dict[str, Any]]:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        if isinstance(prompt, TextOnlyPrompt):
            vllm_prompt: dict[str, Any] = {"prompt": self._render(prompt.template_messages)}
        else:
            vllm_prompt = prompt.vllm_prompt()
        fields = {**self._default_sampling, **sampling}
        structured = fields.pop("structured_outputs", None)
        if structured is not None:
            fields["structured_outputs"] = StructuredOutputsParams(**structured)
        fields["output_kind"] = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        try:
            params = SamplingParams(**fields)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"invalid sampling parameters: {exc}") from None

        produced = False
        try:
            # AsyncLLM.generate aborts the request itself when this generator is cancelled
            # (the client went away): Serve cancels the replica-side generator.
            async for out in self._engine.generate(vllm_prompt, params, request_id):
                produced = True
                yield delta_from_output(out, top_logprobs=top_logprobs)
        except (ValueError, TypeError) as exc:
            if produced:
                raise EngineError(f"generation failed: {exc}") from None
            # vLLM validates inputs (prompt too long, bad media for the processor, ...) with ValueError.
            raise InvalidRequestError(str(exc)) from None
        except Exception as exc:
            if type(exc).__name__ in ("EngineDeadError", "EngineGenerateError"):
                raise EngineError(f"engine failure: {exc}") from None
            raise

    async def check_health(self) -> None:
        await self._engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
