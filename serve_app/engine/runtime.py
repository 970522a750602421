"""One vLLM ``AsyncLLM`` and how requests run on it. Shared by the Serve engine deployment and the
batch job, so both build the engine and sample exactly the same way. Imports vLLM lazily."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, AsyncIterator, Callable

from serve_app.app_config import AppConfig
from serve_app.engine.args import build_engine_kwargs, cpu_threads_binding
from serve_app.engine import cache_env
from serve_app.engine.parallel_env import FLASHINFER_BACKEND_VAR, engine_environment
from serve_app.engine.startup import StartupLog
from serve_app.errors import (
    EngineStartError,
    InvalidRequestError,
    engine_cause,
    engine_error,
    is_client_error,
    truncate,
)
from serve_app.model_source import resolve_model_path
from serve_app.engine.outputs import delta_from_output
from serve_app.engine.placement import engine_placement
from serve_app.engine.contract import Delta, EngineRequest
from serve_app.engine.prompting import chat_renderer
from serve_app.engine.request_log import RequestRecord
from serve_app.preprocess.prepared import PreparedMedia
from serve_app.engine.stream_pacing import paced
from serve_app.observability import metrics
from serve_app.observability.logs import keep_handlers

logger = logging.getLogger("serve_app.engine")


def _announce(msg: str, *args: Any) -> None:
    """An INFO line on the replica's stdout as well as in its log: a Serve replica's logging does not
    forward INFO lines of this logger to the driver, while Ray forwards stdout (as it does vLLM's).
    The cold-start breakdown (bench/serve_bench/coldstart.py) reads these lines."""
    logger.info(msg, *args)
    print(f"INFO {logger.name}: {msg % args}", flush=True)


def _process_age_s() -> float | None:
    """Seconds since this process started (Ray worker start + imports before the engine's __init__)."""
    try:
        import psutil

        return round(time.time() - psutil.Process().create_time(), 2)
    except Exception:  # noqa: BLE001
        return None


class _Marker:
    def __init__(self, phases: dict[str, float | None]) -> None:
        self._phases, self._t = phases, time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self._phases[name] = round(now - self._t, 2)
        self._t = now


class EngineRuntime:
    _request_log: Callable[[dict[str, Any]], None] | None = None

    def __init__(self, config: AppConfig, placement_group: Any = None,
                 request_log: Callable[[dict[str, Any]], None] | None = None) -> None:
        """``placement_group``: the group whose bundles vLLM's Ray workers take (TP×PP > 1);
        None means the caller's current placement group. ``request_log``: gets each request's
        :meth:`~serve_app.engine.request_log.RequestRecord.fields` when it ends (the Serve replica
        logs them; the batch job writes its records instead)."""
        self._request_log = request_log
        t0 = time.monotonic()
        # Seconds per start phase (logged with "engine ready", and in bench/README.md's breakdown).
        phases = self.start_phases = {"process_age_at_init": _process_age_s()}
        mark = _Marker(phases)
        model_path = resolve_model_path(config.model)
        mark("model_path")
        if config.engine.awq_preflight:
            # Seconds, from config.json and safetensors headers, before vLLM is even imported:
            # an AWQ shape that cannot shard at this TP fails here with the command that fixes it.
            from serve_app.awq.preflight import require_tp_compatible

            require_tp_compatible(model_path, config.engine.tensor_parallel_size)
            mark("awq_preflight")

        # Before vLLM is imported: vLLM reads these at import and hands them to its workers.
        facts = cache_env.probe_stack(config.engine.accelerator) if config.engine.cache_dir else None
        env = engine_environment(config.engine, os.environ, cache_env.cache_key(facts) if facts else None)
        for key, value in env.items():
            if key == FLASHINFER_BACKEND_VAR and os.environ.get(key, value) != value:
                logger.warning("%s=%s from the environment replaced by %s (args.engine.allreduce_fusion = %r)",
                               key, os.environ[key], value, config.engine.allreduce_fusion)
            os.environ[key] = value
        if facts is not None:
            self.cache_base = cache_env.prepare(os.environ, facts, who=os.environ.get("SERVE_APP_CACHE_USER", "engine"))
            logger.info("engine caches under %s", self.cache_base)
        else:
            self.cache_base = None
        if config.engine.accelerator == "CPU" and config.engine.world_size > 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_binding(
                sorted(os.sched_getaffinity(0)), config.engine.world_size))

        mark("environment")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM
        mark("import_vllm")
        placement = engine_placement(config.engine)
        kwargs = build_engine_kwargs(config, model_path, placement)
        try:
            engine_args = AsyncEngineArgs(**kwargs)
        except TypeError as exc:
            raise ValueError(f"args.engine.engine_kwargs: not accepted by this vLLM version: {exc}") from None
        # vLLM reconfigures logging here, closing the replica's Serve log handler (observability.logs).
        with keep_handlers():
            vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        if placement.executor_backend == "ray":
            if placement_group is None:
                from ray.util.placement_group import get_current_placement_group

                placement_group = get_current_placement_group()
            if placement_group is None:
                raise RuntimeError("a multi-device engine must run inside its placement group")
            # Hand vLLM the replica's own placement group: its Ray workers take bundles 0..N-1.
            vllm_config.parallel_config.placement_group = placement_group
        mark("engine_config")
        startup_log = StartupLog()
        try:
            with keep_handlers():  # an in-process EngineCore configures vLLM's logging again
                self.engine = AsyncLLM.from_vllm_config(
                    vllm_config,
                    usage_context=UsageContext.OPENAI_API_SERVER,
                    enable_log_requests=False,
                    disable_log_stats=False,
                    stat_loggers=_ray_stat_loggers(),
                )
        except Exception as exc:  # noqa: BLE001 - any start failure becomes one line naming its cause
            message = startup_log.failure_message(exc)
            logger.error("%s", message, exc_info=exc)
            raise EngineStartError(message) from None
        mark("async_llm")  # weights, compile/cache load, KV cache, CUDA graphs, warm-up: vLLM's own log
        self._stream_interval_s = config.serving.stream_interval_ms / 1000.0
        self.max_model_len = vllm_config.model_config.max_model_len
        # The defaults `vllm serve` applies from generation_config.json (temperature, top_p, ...).
        self.default_sampling = dict(vllm_config.model_config.get_diff_sampling_param() or {})
        self._render = chat_renderer(self.engine.tokenizer)  # vLLM's own: no second tokenizer here
        self._media_token_ids = _media_token_ids(self.engine.tokenizer)
        mark("renderer")
        _announce("engine ready in %.1fs: model=%s tp=%d pp=%d defaults=%s", time.monotonic() - t0, model_path,
                  config.engine.tensor_parallel_size, config.engine.pipeline_parallel_size, self.default_sampling)
        _announce("engine start phases (s): %s", " ".join(f"{k}={v}" for k, v in phases.items()))

    def sampling_params(self, sampling: dict[str, Any], stream: bool):
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        for name in ("max_tokens", "min_tokens"):
            limit = sampling.get(name)
            if limit is not None and limit >= self.max_model_len:
                raise InvalidRequestError(
                    f"{name} = {limit} does not fit this model's context length of {self.max_model_len} tokens "
                    "(prompt included)", param=name)
        fields = {**self.default_sampling, **sampling}
        structured = fields.pop("structured_outputs", None)
        fields["output_kind"] = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        try:
            if structured is not None:
                fields["structured_outputs"] = StructuredOutputsParams(**structured)
            return SamplingParams(**fields)
        except Exception as exc:  # noqa: BLE001 - vLLM 0.32's VLLMValidationError is not a ValueError
            if not is_client_error(exc) and not isinstance(exc, TypeError):
                raise
            # vLLM's own sentence (no internals), cut to a readable length.
            raise InvalidRequestError(f"invalid sampling parameters: {truncate(str(exc), 300)}") from None

    async def generate(self, request: EngineRequest, media: PreparedMedia | None = None) -> AsyncIterator[Delta]:
        """The deltas (:func:`serve_app.engine.outputs.delta_from_output`) of one request."""
        request_id, stream = request.request_id, request.stream
        record = RequestRecord(request_id, queue_s=_observe_engine_queue(request, media))
        produced = False
        source = merged = None
        failure: Exception | None = None
        try:
            # Everything that can refuse the request runs inside this try: whatever escapes to the
            # ingress is one of our own error types (a vLLM class would pull vLLM into the ingress
            # to unpickle it), and nothing is added to vLLM before the parameters are accepted.
            vllm_prompt: dict[str, Any] = {"prompt": self._render(request.messages)}
            if media is not None:
                vllm_prompt.update(media.vllm_inputs())
            params = self.sampling_params(request.sampling, stream)

            async def deltas() -> AsyncIterator[Delta]:
                nonlocal produced
                # AsyncLLM.generate aborts the request itself when this generator is closed or
                # cancelled (the client went away and Serve cancelled the replica-side generator).
                async for out in self.engine.generate(vllm_prompt, params, request_id):
                    if not produced and media is not None:
                        record.media_tokens = count_media_tokens(out.prompt_token_ids, self._media_token_ids)
                    produced = True
                    yield delta_from_output(out, top_logprobs=request.top_logprobs, with_token_ids=not stream)

            source = deltas()
            # Streams are paced (serve_app.engine.stream_pacing): one Serve message per interval per
            # request instead of one per token; the first and the last delta are never delayed.
            merged = paced(source, self._stream_interval_s if stream else 0.0)
            async for delta in merged:
                record.on_delta(delta)
                yield delta
            record.succeeded()
        except Exception as exc:  # noqa: BLE001
            err = engine_error(exc, before_output=not produced)
            record.failed(err.status_code, err.error_type)
            cause = engine_cause(exc)
            if err.status_code >= 500:
                logger.error("request %s failed in the engine", request_id, exc_info=cause)
            else:
                # One line, no traceback, no prompt: the reason is the client's to read.
                logger.warning("request %s rejected by the engine: %s", request_id, err.message)
            failure = err
        finally:
            if merged is not None:
                await merged.aclose()
            if source is not None:
                await source.aclose()  # on cancellation too: closing vLLM's generator aborts the request
            if self._request_log is not None:
                self._request_log(record.fields())
        if failure is not None:
            # Raised outside the except block, so no vLLM exception rides along as __context__.
            failure.__cause__ = failure.__context__ = None
            raise failure

    def stats(self) -> dict[str, int]:
        return {"unfinished_requests": int(self.engine.get_num_unfinished_requests())}

    async def check_health(self) -> None:
        await self.engine.check_health()

    def shutdown(self) -> None:
        try:
            self.engine.shutdown()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


def _ray_stat_loggers() -> list | None:
    """vLLM's own metrics (KV cache usage, running/waiting requests, its TTFT ...) through Ray's
    metrics API, so they leave every node with Ray's and the app's (``ray_vllm_*``)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger
    except Exception as exc:  # noqa: BLE001 - metrics never stop an engine from starting
        logger.warning("vLLM metrics not exported through Ray: %r", exc)
        return None
    return [RayPrometheusStatLogger]


def _media_token_ids(tokenizer: Any) -> dict[str, int]:
    """Qwen2.5-VL's placeholder tokens: one per visual token in a rendered prompt."""
    ids = {}
    for kind, token in (("image", "<|image_pad|>"), ("video", "<|video_pad|>")):
        try:
            tid = tokenizer.convert_tokens_to_ids(token)
        except Exception:  # noqa: BLE001
            continue
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None):
            ids[kind] = tid
    return ids


def count_media_tokens(prompt_token_ids: Any, media_token_ids: dict[str, int]) -> dict[str, int]:
    """Visual tokens per kind in a prompt, recorded as metrics and returned."""
    if not prompt_token_ids or not media_token_ids:
        return {}
    ids = list(prompt_token_ids)
    counts = {kind: ids.count(tid) for kind, tid in media_token_ids.items()}
    for kind, n in counts.items():
        metrics.count_tokens(kind, n)
    return counts


def _observe_engine_queue(request: EngineRequest, media: PreparedMedia | None) -> float | None:
    """Ingress dispatch (or, with media, the preprocessor's finish) → this replica starts the request."""
    since = request.sent_at
    ready = getattr(media, "ready_at", None)
    if ready is not None:
        since = ready if since is None else max(since, ready)
    if since is None:
        return None
    waited = time.time() - since
    metrics.observe_stage("engine_queue", waited)
    return waited
