"""The application's own configuration: the ``args:`` of the Serve application (pure).

One pydantic schema validates everything under ``args:`` when the app is built (``serve run`` /
``serve deploy`` call :func:`serve_app.app.build_app`), so a bad value fails at once with one
message naming the key and the value, instead of minutes later inside a replica.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.errors import format_validation_error
from serve_app.media.config import MediaConfig
from serve_app.long_context import LongContextConfig
from serve_app.model_store.config import DownloadConfig

EMBEDDED_TINY_MODEL = "embedded:tiny-qwen2.5-vl"

# Engine arguments that the app derives itself; setting them under engine.engine_kwargs would
# silently fight the placement group or the model section, so they are refused.
_RESERVED_ENGINE_KWARGS = {
    "model": "model.path",
    "tokenizer": "model.path",
    "revision": "model.revision",
    "tokenizer_revision": "model.revision",
    "download_dir": "model.download.cache_dir",
    "served_model_name": "model.served_name",
    "tensor_parallel_size": "engine.tensor_parallel_size",
    "pipeline_parallel_size": "engine.pipeline_parallel_size",
    "distributed_executor_backend": "engine.tensor_parallel_size (the app picks the executor)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    path: str = Field(
        EMBEDDED_TINY_MODEL,
        description=f"Where the checkpoint is: a local directory, a Hugging Face repo id ('org/name' or "
        f"'hf://org/name'), 'modelscope://org/name', or 's3://bucket/prefix'; remote ones are downloaded "
        f"once per node into model.download.cache_dir. "
        f"'{EMBEDDED_TINY_MODEL}' builds the project's tiny random-weight model on first start.",
    )
    revision: str | None = Field(
        None, description="Hub repo ids only, and required there: the commit (or tag/branch, cached under "
        "that name and never re-resolved) to serve."
    )
    served_name: str | None = Field(
        None, description="Model name clients send in `model`; default: the repo id, or the directory's name."
    )
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    long_context: LongContextConfig | None = Field(
        None, description="The model card's long-context switches (YaRN, or a larger max_position_embeddings "
        "for long video), passed to vLLM as hf_overrides; see serve_app/long_context.py for the caveats."
    )

    @model_validator(mode="after")
    def _valid_source(self) -> "ModelSection":
        if not self.is_embedded:
            from serve_app.model_store.sources import parse_source

            parse_source(self.path, self.revision)  # ValueError names what is accepted
        return self

    @property
    def is_embedded(self) -> bool:
        return self.path == EMBEDDED_TINY_MODEL

    @property
    def name(self) -> str:
        if self.served_name:
            return self.served_name
        if self.is_embedded:
            return "qwen2.5-vl-tiny"
        from serve_app.model_store.sources import parse_source

        return parse_source(self.path, self.revision).display_name


class EngineSection(_Strict):
    accelerator: Literal["GPU", "CPU"] = Field(
        "GPU", description="GPU for vLLM's CUDA build; CPU for vLLM's CPU build (development, CI)."
    )
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "STRICT_PACK",
        description="Placement group strategy of an engine replica. STRICT_PACK keeps all of a "
        "replica's GPUs on one node (NVLink for tensor parallelism).",
    )
    replica_cpus: float = Field(1.0, gt=0, description="CPUs held by the engine replica itself (in bundle 0).")
    worker_cpus: float = Field(
        1.0, ge=0, description="CPUs reserved in each bundle beside its GPU for a vLLM worker (TP×PP > 1)."
    )
    bundle_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Extra Ray resources added to every bundle of an engine replica's placement group, "
        "e.g. {'accelerator_type:H100': 0.001} to pin a GPU type, or a custom node resource.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed through to vLLM's AsyncEngineArgs (max_model_len, gpu_memory_utilization, "
        "quantization, limit_mm_per_prompt, ...).",
    )
    awq_preflight: bool = Field(
        True, description="Check AWQ weight shapes against the tensor-parallel size before loading weights."
    )
    start_attempts: int = Field(
        2, ge=1, le=20,
        description="Times Serve tries to start an engine replica before the deployment is DEPLOY_FAILED "
        "with the cause (Serve's max_constructor_retry_count; its own default grows with the replica "
        "count, up to 20 starts of minutes each). A failed start reports its cause in one line.",
    )
    allreduce_fusion: Literal["off", "trtllm", "mnnvl"] = Field(
        "off",
        description="vLLM's compiled allreduce + RMSNorm fusion (FlashInfer kernels) for GPU engines with "
        "tensor_parallel_size > 1. 'off': vLLM's custom allreduce (CUDA IPC over NVLink/PCIe, no NVLink "
        "multicast) followed by a separate RMSNorm; runs on any host and needs no kernel JIT at start. "
        "'trtllm': FlashInfer's TensorRT-LLM fused kernels (one node; JIT-compiled on first start). "
        "'mnnvl': FlashInfer's multicast kernels; needs NVSwitch multicast and is refused where the "
        "environment turns multicast off. vLLM's own default picks mnnvl, which fails on hosts without "
        "multicast, so the app never leaves the choice to vLLM (see serve_app/engine/parallel_env.py).",
    )

    cache_dir: str | None = Field(
        None,
        description="Persistent root for every cache an engine start writes (vLLM's compile cache, torch "
        "Inductor, Triton, FlashInfer's JIT, CUDA's compute cache), under a sub-directory keyed by vLLM, "
        "torch+CUDA, Python and the GPU model, so an upgrade never loads stale artefacts "
        "(serve_app/engine/cache_env.py). Set for the replica and every vLLM worker. A node-local volume "
        "in production (docs/cluster.md); fill it before traffic with `python -m serve_app warmup`. "
        "None: each library's default under ~/.cache.",
    )

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path (every node and every vLLM worker resolves it alike)")
        return value

    @field_validator("engine_kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in _RESERVED_ENGINE_KWARGS:
                raise ValueError(f"'{key}' is set by the app; use {_RESERVED_ENGINE_KWARGS[key]} instead")
        compilation = value.get("compilation_config") or {}
        if isinstance(compilation, dict) and "fuse_allreduce_rms" in (compilation.get("pass_config") or {}):
            raise ValueError("'compilation_config.pass_config.fuse_allreduce_rms' is set by the app; "
                             "use engine.allreduce_fusion instead")
        return value


class ServingSection(_Strict):
    max_n: int = Field(8, ge=1, le=128, description="Largest `n` (choices per request) accepted.")
    max_top_logprobs: int = Field(20, ge=0, le=20)
    stream_interval_ms: float = Field(
        50.0, ge=0, le=1000,
        description="Streaming: at most one chunk per request per this many ms; tokens made in between "
        "are merged into the next chunk. Cuts per-token messages through Serve (engine → ingress → "
        "proxy) at high concurrency; the first and the last chunk are never delayed. 0: a chunk per "
        "engine step.",
    )
    max_request_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest accepted HTTP request body (data URIs included)."
    )
    api_keys_env: str | None = Field(
        None, description="Name of an environment variable with API keys (comma/space separated); when set and "
        "non-empty, every /v1 request needs 'Authorization: Bearer <key>' (401 otherwise).")
    api_keys_file: str | None = Field(
        None, description="File with one API key per line (e.g. a mounted secret); combined with api_keys_env.")
    max_json_schema_bytes: int = Field(
        32768, ge=64, description="Largest response_format json_schema (compact JSON bytes): vLLM compiles the "
        "grammar before the first token (a 100k-string enum took 93 s), so bigger schemas are refused with a 400.")
    # The work of compiling a grammar does not follow its size: a short pattern or a chain of nested
    # objects well under max_json_schema_bytes costs more than a large flat schema (bench/README.md).
    max_json_schema_depth: int = Field(
        64, ge=2, le=1000, description="Deepest nesting of JSON objects and arrays in a response_format "
        "json_schema (a property's schema inside 'properties' is two levels down); deeper is a 400.")
    max_json_schema_nodes: int = Field(
        1024, ge=1, description="Most JSON objects and arrays in a response_format json_schema (its "
        "subschemas and their lists); more is a 400.")
    max_json_schema_enum_values: int = Field(
        1000, ge=1, description="Most 'enum' and 'const' values in a response_format json_schema, all together.")
    max_json_schema_string_work: int = Field(
        1024, ge=1, description="String constraints of a response_format json_schema, all together, weighed by the "
        "grammar states they need: a character bounded by maxLength/minLength counts 16; a 'pattern' (and "
        "'patternProperties') atom 16 when it matches a wide set ('.', \\w, \\S, \\p{..}, a negated class, a "
        "class of more than 16 characters) and 1 otherwise, counted repetitions written out (nested ones "
        "multiply; '*', '+', '?' count once); a 'format' 64. With a full-size vocabulary, compile time grows "
        "with these faster than linearly (maxLength 64 is 1024).")


class AppConfig(_Strict):
    model: ModelSection = Field(default_factory=ModelSection)
    engine: EngineSection = Field(default_factory=EngineSection)
    media: MediaConfig = Field(default_factory=MediaConfig)
    serving: ServingSection = Field(default_factory=ServingSection)

    @model_validator(mode="after")
    def _cpu_engine_is_single_process(self) -> "AppConfig":
        if self.engine.accelerator == "CPU" and self.engine.pipeline_parallel_size > 1:
            raise ValueError("pipeline_parallel_size > 1 is not supported with accelerator CPU")
        return self


class ConfigError(ValueError):
    """A bad value under the Serve application's ``args``; the message names the key and the value."""


def parse_app_config(args: dict[str, Any] | AppConfig | None) -> AppConfig:
    if isinstance(args, AppConfig):
        return args
    try:
        return AppConfig.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError("Invalid app config: " + format_validation_error(
            exc, prefix="args", field="key", unknown="unknown key", show_input=True, limit=None)) from None
