"""vLLM engine arguments for an engine replica (pure: a plain dict for ``AsyncEngineArgs``)."""

from __future__ import annotations

from typing import Any

from serve_app.app_config import AppConfig
from serve_app.engine.parallel_env import compilation_overrides, merge_compilation_config
from serve_app.engine.placement import EnginePlacement
from serve_app.long_context import long_context_kwargs

# The engine-side HF processor runs Qwen2-VL's smart_resize again on what it receives. Our
# preprocessor already resized every image and frame to multiples of 28 within the request's own
# bounds, so the engine's bounds are opened to [28², the preprocessor's hard cap]: smart_resize is
# then the identity on our output and the token counts are exactly what the preprocessor decided.
IDENTITY_MIN_PIXELS = 28 * 28


def build_engine_kwargs(config: AppConfig, model_path: str, placement: EnginePlacement) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "enable_log_requests": False,
        "disable_log_stats": False,
    }
    if config.engine.accelerator == "CPU":
        kwargs["enforce_eager"] = True  # no CUDA graphs / compilation on the CPU build
    kwargs.update(config.engine.engine_kwargs)
    kwargs.update(
        model=model_path,
        served_model_name=[config.model.name],
        tensor_parallel_size=config.engine.tensor_parallel_size,
        pipeline_parallel_size=config.engine.pipeline_parallel_size,
    )
    if placement.executor_backend is not None:
        kwargs["distributed_executor_backend"] = placement.executor_backend
    compilation = merge_compilation_config(kwargs.get("compilation_config"), compilation_overrides(config.engine))
    if compilation is not None:
        kwargs["compilation_config"] = compilation
    kwargs.update(long_context_kwargs(config.model.long_context, model_path, kwargs))
    mm = dict(kwargs.get("mm_processor_kwargs") or {})
    # transformers 5 spells the bounds as `size` (min_pixels/max_pixels in a processor call are
    # deprecated and warn on every request); both edges are required.
    mm.setdefault("size", {
        "shortest_edge": IDENTITY_MIN_PIXELS,
        "longest_edge": max(config.media.image_max_pixels, config.media.video_max_pixels),
    })
    kwargs["mm_processor_kwargs"] = mm
    return kwargs


def cpu_threads_binding(cores: list[int], world_size: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``world_size`` CPU workers: the given cores split into
    contiguous groups, one per rank ("0-3|4-7"). vLLM's CPU build otherwise wants one NUMA node
    per rank and refuses to start tensor parallelism on a single-socket machine."""
    cores = sorted(cores)
    per = max(1, len(cores) // world_size)
    groups = [cores[i * per:(i + 1) * per] or cores[-1:] for i in range(world_size)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)
