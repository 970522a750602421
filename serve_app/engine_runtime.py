"""One vLLM ``AsyncLLM`` and how requests run on it. Shared by the Serve engine deployment and the
batch job, so both build the engine and sample exactly the same way. Imports vLLM lazily."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, AsyncIterator

from serve_app.app_config import AppConfig
from serve_app.engine.parallel_env import FLASHINFER_BACKEND_VAR, engine_environment
from serve_app.engine_args import build_engine_kwargs, cpu_threads_binding
from serve_app.engine.startup import StartupLog
from serve_app.errors import EngineError, EngineStartError, InvalidRequestError
from serve_app.model_source import resolve_model_path
from serve_app.outputs import delta_from_output
from serve_app.placement import engine_placement
from serve_app.prepared import PreparedPrompt, TextOnlyPrompt
from serve_app.prompting import load_chat_renderer
from serve_app.stream_pacing import paced

logger = logging.getLogger("serve_app.engine")


def is_client_error(exc: BaseException) -> bool:
    """Whether vLLM refused the request itself: ``ValueError`` (vLLM 0.26's input validation)
    or a ``VLLMClientError`` (vLLM's 4xx family in newer versions, e.g. ``VLLMValidationError`` for a
    prompt over the context length; not a ValueError there). Matched by name: no vLLM import."""
    return isinstance(exc, ValueError) or any(c.__name__ == "VLLMClientError" for c in type(exc).__mro__)


class EngineRuntime:
    def __init__(self, config: AppConfig, placement_group: Any = None) -> None:
        """``placement_group``: the group whose bundles vLLM's Ray workers take (TP×PP > 1);
        None means the caller's current placement group."""
        t0 = time.monotonic()
        model_path = resolve_model_path(config.model)
        if config.engine.awq_preflight:
            # Seconds, from config.json and safetensors headers, before vLLM is even imported:
            # an AWQ shape that cannot shard at this TP fails here with the command that fixes it.
            from serve_app.awq.preflight import require_tp_compatible

            require_tp_compatible(model_path, config.engine.tensor_parallel_size)

        # Before vLLM is imported: vLLM reads these at import and hands them to its workers.
        for key, value in engine_environment(config.engine, os.environ).items():
            if key == FLASHINFER_BACKEND_VAR and os.environ.get(key, value) != value:
                logger.warning("%s=%s from the environment replaced by %s (args.engine.allreduce_fusion = %r)",
                               key, os.environ[key], value, config.engine.allreduce_fusion)
            os.environ[key] = value
        if config.engine.accelerator == "CPU" and config.engine.world_size > 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_binding(
                sorted(os.sched_getaffinity(0)), config.engine.world_size))

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM
        placement = engine_placement(config.engine)
        kwargs = build_engine_kwargs(config, model_path, placement)
        try:
            engine_args = AsyncEngineArgs(**kwargs)
        except TypeError as exc:
            raise ValueError(f"args.engine.engine_kwargs: not accepted by this vLLM version: {exc}") from None
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        if placement.executor_backend == "ray":
            if placement_group is None:
                from ray.util.placement_group import get_current_placement_group

                placement_group = get_current_placement_group()
            if placement_group is None:
                raise RuntimeError("a multi-device engine must run inside its placement group")
            # Hand vLLM the replica's own placement group: its Ray workers take bundles 0..N-1.
            vllm_config.parallel_config.placement_group = placement_group
        startup_log = StartupLog()
        try:
            self.engine = AsyncLLM.from_vllm_config(
                vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                enable_log_requests=False,
                disable_log_stats=False,
            )
        except Exception as exc:  # noqa: BLE001 - any start failure becomes one line naming its cause
            message = startup_log.failure_message(exc)
            logger.error("%s", message, exc_info=exc)
            raise EngineStartError(message) from None
        self._stream_interval_s = config.serving.stream_interval_ms / 1000.0
        self.max_model_len = vllm_config.model_config.max_model_len
        # The defaults `vllm serve` applies from generation_config.json (temperature, top_p, ...).
        self.default_sampling = dict(vllm_config.model_config.get_diff_sampling_param() or {})
        self._render = load_chat_renderer(model_path)
        logger.info("engine ready in %.1fs: model=%s tp=%d pp=%d defaults=%s", time.monotonic() - t0, model_path,
                    config.engine.tensor_parallel_size, config.engine.pipeline_parallel_size, self.default_sampling)

    def sampling_params(self, sampling: dict[str, Any], stream: bool):
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        limit = sampling.get("max_tokens")
        if limit is not None and limit >= self.max_model_len:
            raise InvalidRequestError(
                f"max_tokens = {limit} does not fit this model's context length of {self.max_model_len} tokens "
                "(prompt included)", param="max_tokens")
        fields = {**self.default_sampling, **sampling}
        structured = fields.pop("structured_outputs", None)
        if structured is not None:
            fields["structured_outputs"] = StructuredOutputsParams(**structured)
        fields["output_kind"] = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        try:
            return SamplingParams(**fields)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"invalid sampling parameters: {exc}") from None

    async def generate(
        self,
        prompt: PreparedPrompt | TextOnlyPrompt,
        sampling: dict[str, Any],
        request_id: str,
        stream: bool,
        top_logprobs: int | None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Plain-dict deltas (:func:`serve_app.outputs.delta_from_output`) for one request."""
        if isinstance(prompt, TextOnlyPrompt):
            vllm_prompt: dict[str, Any] = {"prompt": self._render(prompt.template_messages)}
        else:
            vllm_prompt = prompt.vllm_prompt()
        params = self.sampling_params(sampling, stream)
        produced = False

        async def deltas() -> AsyncIterator[dict[str, Any]]:
            nonlocal produced
            # AsyncLLM.generate aborts the request itself when this generator is closed or
            # cancelled (the client went away and Serve cancelled the replica-side generator).
            async for out in self.engine.generate(vllm_prompt, params, request_id):
                produced = True
                yield delta_from_output(out, top_logprobs=top_logprobs)

        source = deltas()
        # Streams are paced (serve_app.stream_pacing): one Serve message per interval per request
        # instead of one per token; the first and the last delta are never delayed.
        merged = paced(source, self._stream_interval_s if stream else 0.0)
        try:
            async for delta in merged:
                yield delta
        except Exception as exc:  # noqa: BLE001
            # vLLM wraps input-processing failures in EngineGenerateError; the cause says what.
            cause = exc.__cause__ if type(exc).__name__ == "EngineGenerateError" and exc.__cause__ else exc
            if not produced and is_client_error(cause):
                # vLLM's verdict on the request itself (prompt longer than max_model_len, ...).
                logger.warning("request %s rejected by the engine: %r", request_id, cause, exc_info=cause)
                raise InvalidRequestError(str(cause)) from None
            logger.error("request %s failed in the engine", request_id, exc_info=cause)
            raise EngineError(f"engine failure: {type(cause).__name__}: {cause}") from None
        finally:
            await merged.aclose()
            await source.aclose()  # on cancellation too: closing vLLM's generator aborts the request

    def stats(self) -> dict[str, int]:
        return {"unfinished_requests": int(self.engine.get_num_unfinished_requests())}

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        try:
            self.engine.shutdown()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
