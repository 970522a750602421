"""Multi-GPU settings of an engine replica that vLLM would otherwise pick for itself (pure).

Two things go wrong when vLLM decides alone on a host whose NVLink multicast is off (the shared
H200 hosts this project is benchmarked on, and any host without NVSwitch multicast):

* With tensor parallelism and torch.compile, vLLM 0.26 turns on its allreduce + RMSNorm fusion and
  auto-selects FlashInfer's ``mnnvl`` allreduce, a multicast path: the first compiled step died
  there with an illegal memory access (bench/README.md, "Multi-GPU"). The app therefore always
  states the fusion (``engine.allreduce_fusion``, default off) and the FlashInfer backend.
* Variables that turn multicast off (``NCCL_NVLS_ENABLE=0`` ...) must reach every process that
  touches the GPUs. vLLM's Ray executor copies only ``VLLM_*``, ``NCCL_*`` and ``HF_*`` variables
  to its worker actors, so the others are named in ``VLLM_RAY_EXTRA_ENV_VARS_TO_COPY``. The engine
  core and multiprocessing workers inherit the replica's environment.

The same holds for the cache variables of ``engine.cache_dir`` (``serve_app/engine/cache_env.py``):
:func:`engine_environment` sets them too and names the non-``VLLM_*`` ones for the Ray workers.
"""

from __future__ import annotations

from typing import Any, Mapping

from serve_app.app_config import EngineSection
from serve_app.engine import cache_env

# Variable -> the value that turns NVLink multicast off in that library.
MULTICAST_OFF: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
FLASHINFER_BACKEND_VAR = "VLLM_FLASHINFER_ALLREDUCE_BACKEND"
RAY_COPY_VAR = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"


class ParallelConfigError(ValueError):
    """The configured multi-GPU setting cannot run in this environment."""


def multicast_disabled_by(environ: Mapping[str, str]) -> list[str]:
    """The variables in ``environ`` that turn multicast off (``NAME=value``)."""
    return [f"{k}={environ[k]}" for k, off in MULTICAST_OFF.items() if environ.get(k, "").strip() == off]


def uses_tp_allreduce(engine: EngineSection) -> bool:
    return engine.accelerator == "GPU" and engine.tensor_parallel_size > 1


def compilation_overrides(engine: EngineSection) -> dict[str, Any]:
    """``compilation_config`` entries the app sets (merged into the user's own)."""
    if not uses_tp_allreduce(engine):
        return {}
    return {"pass_config": {"fuse_allreduce_rms": engine.allreduce_fusion != "off"}}


def merge_compilation_config(user: Any, overrides: dict[str, Any]) -> Any:
    """The user's ``compilation_config`` (a dict, or vLLM's JSON string / optimisation level left
    alone when there is nothing to add) with the app's ``pass_config`` entries on top."""
    if not overrides:
        return user
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise ParallelConfigError(
            "args.engine.engine_kwargs.compilation_config must be a mapping when tensor_parallel_size > 1 "
            f"(the app adds pass_config.fuse_allreduce_rms to it); got {type(user).__name__}")
    merged = dict(user)
    merged["pass_config"] = {**(user.get("pass_config") or {}), **overrides.get("pass_config", {})}
    return merged


def _copied_by_vllm(name: str) -> bool:
    return name.startswith(("VLLM_", "NCCL_", "HF_"))


def engine_environment(engine: EngineSection, environ: Mapping[str, str], cache_key: str | None = None) -> dict[str, str]:
    """Variables an engine replica sets in its own environment before vLLM is imported (every
    vLLM process it starts inherits or is sent them). Raises :class:`ParallelConfigError` for a
    setting the environment rules out.

    With ``engine.cache_dir`` set, the cache variables of :func:`cache_env.cache_environment` under
    ``<cache_dir>/<cache_key>``; ``cache_key`` None probes this node's stack
    (:func:`cache_env.probe_stack`, no torch/vLLM import)."""
    env: dict[str, str] = {}
    if engine.cache_dir:
        key = cache_key or cache_env.cache_key(cache_env.probe_stack(engine.accelerator))
        env.update(cache_env.cache_environment(engine.cache_dir, key))
    off = multicast_disabled_by(environ)
    if uses_tp_allreduce(engine):
        if engine.allreduce_fusion == "mnnvl" and off:
            raise ParallelConfigError(
                "args.engine.allreduce_fusion = 'mnnvl' needs NVLink multicast, which this environment "
                f"turns off ({', '.join(off)}); use 'off' (default) or 'trtllm'")
        # 'off' pins the backend too: nothing else in vLLM (e.g. VLLM_ALLREDUCE_USE_FLASHINFER=1)
        # can then fall back to vLLM's 'auto', which means mnnvl.
        env[FLASHINFER_BACKEND_VAR] = "mnnvl" if engine.allreduce_fusion == "mnnvl" else "trtllm"
    present = [k for k in MULTICAST_OFF if k in environ]
    present += [k for k in env if not _copied_by_vllm(k)]
    if present:
        names = [n.strip() for n in environ.get(RAY_COPY_VAR, "").split(",") if n.strip()]
        env[RAY_COPY_VAR] = ",".join(dict.fromkeys(names + present))
    return env
