"""Reading a checkpoint's config and quantization config, and the tensor-parallel shapes vLLM
gives each sharded linear layer of a Qwen2 / Qwen2.5-VL language model.

No vLLM import: the constants below are transcribed from vLLM and cited where they live.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

# --- vLLM's constraints (vllm/model_executor/layers/quantization/...) ------------------------
# awq.py AWQLinearMethod.create_weights:
#   input_size_per_partition % group_size != 0  -> "The input size is not aligned with the quantized
#                                                   weight shape. This can be caused by too large
#                                                   tensor parallel size."
#   output_size_per_partition % pack_factor != 0 -> "The output size is not aligned ..."
AWQ_PACK_FACTOR = 8  # 32 // w_bit, w_bit = 4
# utils/marlin_utils.py verify_marlin_supports_shape (called by awq_marlin.py create_weights,
# check_marlin_supports_layer decides the fallback to the plain AWQ kernel):
GPTQ_MARLIN_MIN_THREAD_N = 64  # output_size_per_partition % 64
GPTQ_MARLIN_MIN_THREAD_K = 128  # input_size_per_partition % 128
MARLIN_SUPPORTED_GROUP_SIZES = (-1, 32, 64, 128)  # and group_size < input_size -> K_part % group

CONFIG_FILE = "config.json"
QUANT_CONFIG_FILES = ("quant_config.json", "quantize_config.json")  # AutoAWQ / vLLM get_config_filenames
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Nested sub-configs that hold the language model's sizes (Qwen2.5-VL: text_config).
TEXT_CONFIG_KEYS = ("text_config", "language_config", "llm_config")

SUPPORTED_VARIANTS = (
    "AutoAWQ GEMM checkpoints: quant_method 'awq', version 'gemm' (or absent), bits/w_bit 4, "
    "zero_point true, group_size/q_group_size > 0, safetensors weights"
)


class AwqConfigError(ValueError):
    """The checkpoint's config.json / quantization config cannot be read or understood."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError) as exc:
        raise AwqConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise AwqConfigError(f"{path}: expected a JSON object")
    return data


def load_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise AwqConfigError(f"{model_dir}: no {CONFIG_FILE}")
    return read_json(path)


def text_config(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The dict holding the language model's sizes and where it was found.

    Qwen2.5-VL configs written by transformers carry the LM sizes flat at the top level (older
    releases), nested in ``text_config`` (newer), or both; the nested one wins when it has
    ``intermediate_size``.
    """
    for key in TEXT_CONFIG_KEYS:
        sub = config.get(key)
        if isinstance(sub, dict) and "intermediate_size" in sub:
            return sub, key
    if "intermediate_size" in config:
        return config, "config"
    raise AwqConfigError("config.json has no intermediate_size (flat or in text_config)")


# --- quantization config ------------------------------------------------------------------


@dataclass(frozen=True)
class QuantConfig:
    """The quantization settings that matter here, normalised across AutoAWQ/transformers spellings."""

    method: str  # "awq", "gptq", ... lower-case; "" when unknown
    bits: int | None
    group_size: int | None
    zero_point: bool | None
    version: str | None  # AWQ: "gemm", "gemv", "gemv_fast", "exllama", "marlin", "ipex" ... lower-case
    modules_to_not_convert: tuple[str, ...]
    source: str  # "config.json:quantization_config", "quant_config.json", ...
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_awq(self) -> bool:
        return self.method == "awq"

    def unsupported_reason(self) -> str | None:
        """Why the padding converter does not handle this variant (None: it does)."""
        if self.method != "awq":
            what = self.method or "unknown quantization"
            return f"quant_method {what!r} is not AWQ"
        if self.version not in (None, "gemm"):
            return (
                f"AWQ version {self.version!r}: its packing differs from GEMM "
                "(GEMV/GEMV_fast pack along the input dim, exllama/marlin/ipex are kernel-specific layouts)"
            )
        if self.bits != 4:
            return f"AWQ with {self.bits} bits (only 4-bit is handled)"
        if self.zero_point is not True:
            return f"AWQ with zero_point={self.zero_point} (only zero_point true is handled)"
        if not self.group_size or self.group_size <= 0:
            return f"AWQ group_size {self.group_size} (per-channel / -1 is not handled; a positive group is)"
        return None


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def _to_quant_config(raw: dict[str, Any], source: str, *, assume_awq: bool) -> QuantConfig:
    method = str(raw.get("quant_method") or ("awq" if assume_awq else "")).lower()
    bits = _first(raw, "bits", "w_bit")
    group = _first(raw, "group_size", "q_group_size")
    zp = raw.get("zero_point")
    version = raw.get("version")
    skip = raw.get("modules_to_not_convert") or ()
    return QuantConfig(
        method=method,
        bits=int(bits) if bits is not None else None,
        group_size=int(group) if group is not None else None,
        zero_point=bool(zp) if zp is not None else None,
        version=str(version).lower() if version is not None else None,
        modules_to_not_convert=tuple(str(s) for s in skip),
        source=source,
        raw=raw,
    )


def load_quant_config(model_dir: str | os.PathLike, config: dict[str, Any] | None = None) -> QuantConfig | None:
    """``quantization_config`` from config.json (top level or text_config), else AutoAWQ's
    ``quant_config.json`` / ``quantize_config.json``; None for an unquantized model."""
    model_dir = Path(model_dir)
    if config is None:
        config = load_config(model_dir)
    qc = config.get("quantization_config")
    if isinstance(qc, dict):
        return _to_quant_config(qc, f"{CONFIG_FILE}:quantization_config", assume_awq=False)
    for key in TEXT_CONFIG_KEYS:
        sub = config.get(key)
        if isinstance(sub, dict) and isinstance(sub.get("quantization_config"), dict):
            return _to_quant_config(
                sub["quantization_config"], f"{CONFIG_FILE}:{key}.quantization_config", assume_awq=False
            )
    for name in QUANT_CONFIG_FILES:
        path = model_dir / name
        if path.is_file():
            raw = read_json(path)
            # AutoAWQ's own quant_config.json has no quant_method: {"zero_point", "q_group_size", "w_bit", "version"}
            return _to_quant_config(raw, name, assume_awq="w_bit" in raw or "q_group_size" in raw)
    return None


# --- language-model shapes ------------------------------------------------------------------


@dataclass(frozen=True)
class TextShapes:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    source: str  # "text_config" or "config"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TextShapes":
        tc, where = text_config(config)

        def get(key: str, default: Any = None) -> Any:
            if key in tc and tc[key] is not None:
                return tc[key]
            if key in config and config[key] is not None:  # flat fallback
                return config[key]
            if default is not None:
                return default
            raise AwqConfigError(f"config.json has no {key} (looked in {where} and the top level)")

        hidden = int(get("hidden_size"))
        heads = int(get("num_attention_heads"))
        kv = int(get("num_key_value_heads", heads))
        head_dim = tc.get("head_dim") or (hidden // heads)
        return cls(
            hidden_size=hidden,
            intermediate_size=int(tc["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=int(head_dim),
            num_hidden_layers=int(get("num_hidden_layers")),
            source=where,
        )


@dataclass(frozen=True)
class Partition:
    """What vLLM's ``create_weights`` receives for one rank."""

    input_size: int
    input_size_per_partition: int
    output_partition_sizes: tuple[int, ...]

    @property
    def output_size_per_partition(self) -> int:
        return sum(self.output_partition_sizes)


@dataclass(frozen=True)
class ShardedLinear:
    """One tensor-parallel linear layer of the decoder, as vLLM builds it (Qwen2 / Qwen2.5-VL)."""

    name: str  # vLLM module name, e.g. "mlp.down_proj"
    hf_names: tuple[str, ...]  # checkpoint modules merged into it
    parallel: str  # "column" (N sharded) or "row" (K sharded)
    input_size: int
    output_sizes: tuple[int, ...]
    sharded_dim_key: str  # config key(s) the sharded dimension comes from


def decoder_linears(s: TextShapes) -> list[ShardedLinear]:
    q = s.num_attention_heads * s.head_dim
    kv = s.num_key_value_heads * s.head_dim
    return [
        ShardedLinear("self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj"), "column", s.hidden_size,
                      (q, kv, kv), "num_attention_heads/num_key_value_heads * head_dim"),
        ShardedLinear("self_attn.o_proj", ("o_proj",), "row", q, (s.hidden_size,),
                      "num_attention_heads * head_dim"),
        ShardedLinear("mlp.gate_up_proj", ("gate_proj", "up_proj"), "column", s.hidden_size,
                      (s.intermediate_size, s.intermediate_size), "intermediate_size"),
        ShardedLinear("mlp.down_proj", ("down_proj",), "row", s.intermediate_size, (s.hidden_size,),
                      "intermediate_size"),
    ]


def partition(linear: ShardedLinear, s: TextShapes, tp: int) -> Partition | str:
    """The per-rank shape, or a string saying why vLLM cannot split it at all."""
    if linear.name == "self_attn.qkv_proj":
        # vLLM QKVParallelLinear: heads split evenly; kv heads split, or replicated when tp >= kv.
        if s.num_attention_heads % tp:
            return f"num_attention_heads {s.num_attention_heads} is not divisible by TP {tp}"
        if tp >= s.num_key_value_heads:
            if tp % s.num_key_value_heads:
                return f"TP {tp} is not a multiple of num_key_value_heads {s.num_key_value_heads}"
            kv_part = 1
        else:
            if s.num_key_value_heads % tp:
                return f"num_key_value_heads {s.num_key_value_heads} is not divisible by TP {tp}"
            kv_part = s.num_key_value_heads // tp
        q_part = s.num_attention_heads // tp * s.head_dim
        return Partition(linear.input_size, linear.input_size, (q_part, kv_part * s.head_dim, kv_part * s.head_dim))
    if linear.parallel == "column":
        for n in linear.output_sizes:
            if n % tp:
                return f"{linear.sharded_dim_key} {n} is not divisible by TP {tp}"
        return Partition(linear.input_size, linear.input_size, tuple(n // tp for n in linear.output_sizes))
    if linear.input_size % tp:
        return f"{linear.sharded_dim_key} {linear.input_size} is not divisible by TP {tp}"
    return Partition(linear.input_size, linear.input_size // tp, linear.output_sizes)


# --- safetensors headers (no tensor data read) ------------------------------------------------


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """(header dict, byte offset where the data section starts)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise AwqConfigError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 512 * 1024 * 1024:
            raise AwqConfigError(f"{path}: implausible safetensors header length {n}")
        header = json.loads(f.read(n))
    return header, 8 + n


def weight_files(model_dir: str | os.PathLike) -> list[str]:
    """Safetensors weight files of a checkpoint, by index when there is one (relative names)."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.is_file():
        wm = read_json(index).get("weight_map") or {}
        return sorted(set(wm.values()))
    if (model_dir / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    return sorted(p.name for p in model_dir.glob("*.safetensors"))


def iter_tensor_headers(model_dir: str | os.PathLike) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(file, tensor name, {"dtype", "shape", "data_offsets"}) for every tensor, headers only."""
    model_dir = Path(model_dir)
    for name in weight_files(model_dir):
        header, _ = read_safetensors_header(model_dir / name)
        for tname, info in header.items():
            if tname != "__metadata__":
                yield name, tname, info


def lcm(*values: int) -> int:
    out = 1
    for v in values:
        out = math.lcm(out, v)
    return out


# --- decoder MLP tensor names ---------------------------------------------------------------
# Matched by suffix so that every layout works: "model.layers.N.mlp.*" (Qwen2 / original
# Qwen2.5-VL), "model.language_model.layers.N.mlp.*" (transformers >= 4.52 / 5.x Qwen2.5-VL),
# "language_model.model.layers.N.mlp.*" (vLLM-style). Vision towers ("visual.blocks.N.mlp.*")
# have their own intermediate size and are never touched.
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")
MLP_TENSOR_RE = re.compile(
    r"^(?P<prefix>(?:.*\.)?)layers\.(?P<layer>\d+)\.mlp\.(?P<proj>[A-Za-z0-9_]+)\.(?P<param>[A-Za-z0-9_]+)$"
)
VISION_MARKERS = ("visual", "vision")


def is_vision_name(name: str) -> bool:
    low = name.lower()
    return any(m in low for m in VISION_MARKERS)


def match_mlp_tensor(name: str) -> re.Match[str] | None:
    """Match a decoder-layer MLP tensor name (any prefix), or None (vision towers excluded)."""
    if is_vision_name(name):
        return None
    return MLP_TENSOR_RE.match(name)
