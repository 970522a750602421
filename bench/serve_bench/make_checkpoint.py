"""Random-weight Qwen2.5-VL checkpoints with the released architectures' real shapes (no downloads).

    python -m bench.serve_bench.make_checkpoint --shape 7b --out /tmp/bench/model-7b
    python -m bench.serve_bench.make_checkpoint --shape 72b-awq --out /tmp/bench/model-72b-awq
    python -m bench.serve_bench.make_checkpoint --shape tiny --out DIR      # = serve_app.tiny_model.build
    python -m bench.serve_bench.make_checkpoint --shape 7b --out DIR --dry-run   # config + sizes, no weights

Everything is the real model's except the vocabulary: the tokenizer is the tiny model's byte-level
BPE (1024 merges-vocabulary + Qwen's 22 added tokens = 1046 ids, same special-token names, chat
template and processor configs; :mod:`serve_app.tiny_model` writes them), and ``vocab_size`` is the
next multiple of 64 above it (1088) instead of 152064. That changes only the sizes of
``embed_tokens`` and ``lm_head`` (7B: 2 x 545 M -> 2 x 3.9 M parameters, -2.2 GB of bf16 that a
decode step reads once per token for lm_head only); every transformer layer, the vision tower and
the KV cache are exactly the released model's. The anchor numbers of issue #6 were measured with a
640-token vocabulary the same way. Rows past the tokenizer's 1046 ids are zero in both matrices, so
greedy decoding never produces an id the tokenizer cannot decode.

Weights: ``--init randn`` (default) draws N(0, 0.02) from a seeded generator on the GPU when one is
available (hundreds of GB/s; the build is bound by the host copy and the disk), else on the CPU
(multi-threaded, ~1 GB/s). ``--init tile`` repeats one random 1 M-element block: about as fast as the
disk on any machine, the values are still random-looking and bounded, which is all a benchmark with
``ignore_eos`` and fixed ``max_tokens`` needs (the amount of work does not depend on the values).
Norm scales are 1. AWQ (``72b-awq``): decoder linear layers are packed int4 (AutoAWQ GEMM layout,
group 128, zero point 8 in every nibble, random nibbles in ``qweight``, constant scale 0.004 ->
dequantized std ~0.018); the vision tower, embeddings, norms, biases and ``lm_head`` stay fp16, as in
Qwen/Qwen2.5-VL-72B-Instruct-AWQ (``modules_to_not_convert: ["visual"]``). Its intermediate size is
29696 (the released 29568 padded to a multiple of 128 x TP 2/4/8, see serve_app.awq).

Sharded safetensors (``model-0000i-of-0000N.safetensors``, ~``--shard-gb`` each, default 5) plus
``model.safetensors.index.json``, tensor names as in the released checkpoints (``model.*``,
``visual.*``, ``lm_head``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from serve_app import tiny_model as tm

TOKENIZER_SIZE = tm.BASE_VOCAB_SIZE + len(tm.ADDED_TOKENS)  # 1046
VOCAB_MULTIPLE = 64
BENCH_VOCAB_SIZE = -(-TOKENIZER_SIZE // VOCAB_MULTIPLE) * VOCAB_MULTIPLE  # 1088
INIT_STD = 0.02
AWQ_GROUP = 128
AWQ_PACK = 8  # int4 values per int32
AWQ_ZERO_WORD = 0x88888888 - (1 << 32)  # zero point 8 in all eight nibbles, as a signed int32
AWQ_SCALE = 0.004
SEED = 20250601


@dataclass(frozen=True)
class Shape:
    name: str
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    vision_depth: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    fullatt_block_indexes: tuple[int, ...]
    window_size: int = 112
    mrope_section: tuple[int, ...] = (16, 24, 24)
    rope_theta: float = 1000000.0
    max_position_embeddings: int = 128000
    vocab_size: int = BENCH_VOCAB_SIZE
    dtype: str = "bfloat16"
    awq: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.text_hidden // self.text_heads

    def with_layers(self, layers: int | None = None, vision_depth: int | None = None) -> "Shape":
        """A smaller copy for tests/dry runs (full-attention blocks kept where they still exist)."""
        s = self
        if layers is not None:
            s = replace(s, text_layers=layers)
        if vision_depth is not None:
            full = tuple(i for i in s.fullatt_block_indexes if i < vision_depth) or (vision_depth - 1,)
            s = replace(s, vision_depth=vision_depth, fullatt_block_indexes=full)
        return s


# Qwen/Qwen2.5-VL-7B-Instruct config.json (vocabulary aside).
SHAPE_7B = Shape(
    name="7b", text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
    vision_depth=32, vision_hidden=1280, vision_heads=16, vision_intermediate=3420,
    fullatt_block_indexes=(7, 15, 23, 31),
)
# Qwen/Qwen2.5-VL-72B-Instruct-AWQ (vocabulary aside; intermediate 29568 -> 29696, see module doc).
SHAPE_72B_AWQ = Shape(
    name="72b-awq", text_hidden=8192, text_layers=80, text_heads=64, text_kv_heads=8, text_intermediate=29696,
    vision_depth=32, vision_hidden=1280, vision_heads=16, vision_intermediate=3456,
    fullatt_block_indexes=(7, 15, 23, 31), dtype="float16", awq=True,
)
# The tiny test model's dimensions (serve_app.tiny_model), used to cross-check the shape table.
SHAPE_TINY = Shape(
    name="tiny", text_hidden=tm.TEXT_HIDDEN, text_layers=tm.TEXT_LAYERS, text_heads=tm.TEXT_HEADS,
    text_kv_heads=tm.TEXT_KV_HEADS, text_intermediate=tm.TEXT_INTERMEDIATE, vision_depth=tm.VISION_DEPTH,
    vision_hidden=tm.VISION_HIDDEN, vision_heads=tm.VISION_HEADS, vision_intermediate=tm.VISION_INTERMEDIATE,
    fullatt_block_indexes=tuple(tm.FULLATT_BLOCK_INDEXES), mrope_section=tuple(tm.MROPE_SECTION),
    max_position_embeddings=tm.MAX_POSITION_EMBEDDINGS, vocab_size=tm.VOCAB_SIZE,
)
SHAPES = {"7b": SHAPE_7B, "72b-awq": SHAPE_72B_AWQ}


# ---------------------------------------------------------------------------------------------- config
def model_config(shape: Shape) -> dict[str, Any]:
    """config.json: the tiny model's (transformers 5 layout, real token ids) with the real dimensions."""
    cfg = copy.deepcopy(tm._model_config())
    t, v = cfg["text_config"], cfg["vision_config"]
    t.update(
        vocab_size=shape.vocab_size, hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_kv_heads, max_position_embeddings=shape.max_position_embeddings,
        max_window_layers=shape.text_layers, layer_types=["full_attention"] * shape.text_layers,
        sliding_window=None, dtype=shape.dtype,
    )
    t["rope_parameters"] = {"rope_type": "default", "rope_theta": shape.rope_theta,
                            "mrope_section": list(shape.mrope_section)}
    v.update(
        depth=shape.vision_depth, hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_heads=shape.vision_heads, out_hidden_size=shape.text_hidden,
        fullatt_block_indexes=list(shape.fullatt_block_indexes), window_size=shape.window_size, dtype=shape.dtype,
    )
    cfg["dtype"] = shape.dtype
    if shape.awq:
        cfg["quantization_config"] = {
            "quant_method": "awq", "bits": 4, "group_size": AWQ_GROUP, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": ["visual"],
        }
    return cfg


def check_shape(shape: Shape) -> None:
    if shape.text_hidden % shape.text_heads or shape.vision_hidden % shape.vision_heads:
        raise ValueError("hidden size must be a multiple of the head count")
    if 2 * sum(shape.mrope_section) != shape.head_dim:
        raise ValueError(f"mrope_section {shape.mrope_section} must sum to head_dim/2 = {shape.head_dim // 2}")
    if shape.text_heads % shape.text_kv_heads:
        raise ValueError("text heads must be a multiple of KV heads")
    if any(i >= shape.vision_depth for i in shape.fullatt_block_indexes):
        raise ValueError("fullatt_block_indexes must be < vision depth")
    if shape.vocab_size < TOKENIZER_SIZE and shape.name != "tiny":
        raise ValueError(f"vocab_size {shape.vocab_size} < tokenizer size {TOKENIZER_SIZE}")
    if shape.awq:
        for n in (shape.text_hidden, shape.text_intermediate):
            if n % AWQ_GROUP:
                raise ValueError(f"AWQ: {n} is not a multiple of the group size {AWQ_GROUP}")


# ---------------------------------------------------------------------------------------------- tensors
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "bfloat16" | "float16" | "int32"
    kind: str  # "normal" | "ones" | "qweight" | "qzeros" | "scales"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * (4 if self.dtype == "int32" else 2)


def _linear(name: str, out_f: int, in_f: int, dtype: str, awq: bool, bias: bool) -> list[TensorSpec]:
    if awq:
        specs = [
            TensorSpec(f"{name}.qweight", (in_f, out_f // AWQ_PACK), "int32", "qweight"),
            TensorSpec(f"{name}.qzeros", (in_f // AWQ_GROUP, out_f // AWQ_PACK), "int32", "qzeros"),
            TensorSpec(f"{name}.scales", (in_f // AWQ_GROUP, out_f), dtype, "scales"),
        ]
    else:
        specs = [TensorSpec(f"{name}.weight", (out_f, in_f), dtype, "normal")]
    if bias:
        specs.append(TensorSpec(f"{name}.bias", (out_f,), dtype, "normal"))
    return specs


def tensor_specs(shape: Shape) -> list[TensorSpec]:
    """Every tensor of the checkpoint, in the released checkpoints' naming (same order and names as
    :func:`serve_app.tiny_model.weight_shapes`)."""
    dt, awq = shape.dtype, shape.awq
    h, i, hd = shape.text_hidden, shape.text_intermediate, shape.head_dim
    q, kv = shape.text_heads * hd, shape.text_kv_heads * hd
    specs = [TensorSpec("model.embed_tokens.weight", (shape.vocab_size, h), dt, "normal")]
    for n in range(shape.text_layers):
        p = f"model.layers.{n}."
        specs.append(TensorSpec(p + "input_layernorm.weight", (h,), dt, "ones"))
        specs += _linear(p + "self_attn.q_proj", q, h, dt, awq, True)
        specs += _linear(p + "self_attn.k_proj", kv, h, dt, awq, True)
        specs += _linear(p + "self_attn.v_proj", kv, h, dt, awq, True)
        specs += _linear(p + "self_attn.o_proj", h, q, dt, awq, False)
        specs.append(TensorSpec(p + "post_attention_layernorm.weight", (h,), dt, "ones"))
        specs += _linear(p + "mlp.gate_proj", i, h, dt, awq, False)
        specs += _linear(p + "mlp.up_proj", i, h, dt, awq, False)
        specs += _linear(p + "mlp.down_proj", h, i, dt, awq, False)
    specs.append(TensorSpec("model.norm.weight", (h,), dt, "ones"))
    specs.append(TensorSpec("lm_head.weight", (shape.vocab_size, h), dt, "normal"))

    vh, vi = shape.vision_hidden, shape.vision_intermediate
    specs.append(TensorSpec("visual.patch_embed.proj.weight",
                            (vh, tm.IN_CHANNELS, tm.TEMPORAL_PATCH_SIZE, tm.PATCH_SIZE, tm.PATCH_SIZE), dt, "normal"))
    for n in range(shape.vision_depth):
        p = f"visual.blocks.{n}."
        specs.append(TensorSpec(p + "norm1.weight", (vh,), dt, "ones"))
        specs += _linear(p + "attn.qkv", 3 * vh, vh, dt, False, True)
        specs += _linear(p + "attn.proj", vh, vh, dt, False, True)
        specs.append(TensorSpec(p + "norm2.weight", (vh,), dt, "ones"))
        specs += _linear(p + "mlp.gate_proj", vi, vh, dt, False, True)
        specs += _linear(p + "mlp.up_proj", vi, vh, dt, False, True)
        specs += _linear(p + "mlp.down_proj", vh, vi, dt, False, True)
    merged = vh * tm.SPATIAL_MERGE_SIZE ** 2
    specs.append(TensorSpec("visual.merger.ln_q.weight", (vh,), dt, "ones"))
    specs += _linear("visual.merger.mlp.0", merged, merged, dt, False, True)
    specs += _linear("visual.merger.mlp.2", h, merged, dt, False, True)
    return specs


def size_summary(specs: list[TensorSpec]) -> dict[str, int]:
    """Bytes and parameter counts by part. ``decode_bytes``: what one decode step must read from
    memory at batch 1 (every decoder layer, the final norm and lm_head; not the vision tower, and of
    the embedding only one row)."""
    total = sum(s.nbytes for s in specs)
    vision = sum(s.nbytes for s in specs if s.name.startswith("visual."))
    embed = sum(s.nbytes for s in specs if s.name == "model.embed_tokens.weight")
    params = sum(s.numel * (AWQ_PACK if s.kind == "qweight" else 1) for s in specs if s.kind != "qzeros"
                 and s.kind != "scales")
    return {
        "total_bytes": total,
        "vision_bytes": vision,
        "embed_bytes": embed,
        "decode_bytes": total - vision - embed,
        "params": params,
        "tensors": len(specs),
    }


def plan_shards(specs: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive tensors into shards of about ``shard_bytes`` (a tensor larger than that gets its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def shard_file_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


# ---------------------------------------------------------------------------------------------- values
class _Filler:
    """Makes tensor values on ``device`` (then moved to the CPU for writing)."""

    def __init__(self, device: str, init: str, seed: int) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.init = init
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self._block: dict[Any, Any] = {}

    def _tile(self, n: int, dtype) -> Any:
        torch = self.torch
        key = dtype
        if key not in self._block:
            self._block[key] = (torch.randn(1 << 20, generator=self.gen, device=self.device) * INIT_STD).to(dtype)
        block = self._block[key]
        reps = -(-n // block.numel())
        return block.repeat(reps)[:n]

    def make(self, spec: TensorSpec) -> Any:
        torch = self.torch
        if spec.kind == "ones":
            t = torch.ones(spec.shape, dtype=getattr(torch, spec.dtype), device=self.device)
        elif spec.kind == "scales":
            t = torch.full(spec.shape, AWQ_SCALE, dtype=getattr(torch, spec.dtype), device=self.device)
        elif spec.kind == "qzeros":
            t = torch.full(spec.shape, AWQ_ZERO_WORD, dtype=torch.int32, device=self.device)
        elif spec.kind == "qweight":
            t = torch.randint(-(1 << 31), (1 << 31) - 1, spec.shape, dtype=torch.int32, device=self.device,
                              generator=self.gen)
        elif self.init == "tile":
            t = self._tile(spec.numel, getattr(torch, spec.dtype)).view(spec.shape)
        else:
            t = torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device=self.device)
            t.normal_(0.0, INIT_STD, generator=self.gen)
        if spec.name in ("model.embed_tokens.weight", "lm_head.weight"):
            t[TOKENIZER_SIZE:] = 0  # never produce (or embed) an id the tokenizer cannot decode
        return t.contiguous().cpu()


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        return "cpu"


# ---------------------------------------------------------------------------------------------- writing
def write_support_files(out: pathlib.Path, shape: Shape) -> None:
    """config, generation config, tokenizer, chat template and processor configs (tiny_model's writers)."""
    out.mkdir(parents=True, exist_ok=True)
    tm._write_json(out / "config.json", model_config(shape))
    tm._write_json(out / "generation_config.json", tm._generation_config())  # token ids only, no sampling
    tm._build_tokenizer().save(str(out / "tokenizer.json"), pretty=True)
    tok_cfg = tm._tokenizer_config()
    tok_cfg["model_max_length"] = shape.max_position_embeddings
    tm._write_json(out / "tokenizer_config.json", tok_cfg)
    tm._write_json(out / "chat_template.json", {"chat_template": tm.CHAT_TEMPLATE})
    tm._write_json(out / "preprocessor_config.json", tm._preprocessor_config())
    tm._write_json(out / "video_preprocessor_config.json", tm._video_preprocessor_config())


def build(out_dir: str | pathlib.Path, shape: Shape, *, init: str = "randn", device: str | None = None,
          shard_gb: float = 5.0, seed: int = SEED, dry_run: bool = False,
          log=print) -> dict[str, Any]:
    """Write the checkpoint; returns a summary (sizes, shards, seconds, how values were made)."""
    check_shape(shape)
    out = pathlib.Path(out_dir)
    t0 = time.monotonic()
    specs = tensor_specs(shape)
    sizes = size_summary(specs)
    shards = plan_shards(specs, int(shard_gb * 1e9))
    summary: dict[str, Any] = {"shape": shape.name, "out": str(out), "init": init, "dry_run": dry_run,
                               "vocab_size": shape.vocab_size, "tokenizer_size": TOKENIZER_SIZE,
                               "dtype": shape.dtype, "awq": shape.awq, "shards": len(shards), **sizes}
    write_support_files(out, shape)
    if dry_run:
        summary["seconds"] = round(time.monotonic() - t0, 2)
        return summary
    from safetensors.torch import save_file

    device = device or _default_device()
    summary["device"] = device
    filler = _Filler(device, init, seed)
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards):
        name = shard_file_name(k, len(shards))
        tensors = {s.name: filler.make(s) for s in shard}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        (out / name).chmod(0o644)
        weight_map.update({s.name: name for s in shard})
        del tensors
        log(f"[make_checkpoint] {name}: {sum(s.nbytes for s in shard) / 1e9:.2f} GB "
            f"({time.monotonic() - t0:.1f}s)")
    tm._write_json(out / "model.safetensors.index.json",
                   {"metadata": {"total_size": sizes["total_bytes"]}, "weight_map": weight_map})
    summary["seconds"] = round(time.monotonic() - t0, 2)
    tm._write_json(out / "bench_checkpoint.json", summary)
    return summary


def disk_bytes(path: str | pathlib.Path) -> int:
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def iter_shape_table(shape: Shape) -> Iterator[str]:
    for s in tensor_specs(shape):
        yield f"{s.name}\t{s.dtype}\t{list(s.shape)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve_bench.make_checkpoint", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", *SHAPES], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--init", choices=["randn", "tile"], default="randn",
                    help="randn: seeded N(0, 0.02) (on the GPU if present); tile: one random block repeated (fast on CPU)")
    ap.add_argument("--device", default=None, help="where values are generated (default: cuda if available)")
    ap.add_argument("--shard-gb", type=float, default=5.0)
    ap.add_argument("--layers", type=int, default=None, help="override the text layer count (tests, dry runs)")
    ap.add_argument("--vision-depth", type=int, default=None, help="override the vision depth (tests, dry runs)")
    ap.add_argument("--intermediate", type=int, default=None,
                    help="override the text MLP intermediate size (e.g. 29568, the unpadded 72B-AWQ, which the "
                         "app must refuse at TP 2/4/8)")
    ap.add_argument("--dry-run", action="store_true", help="write config/tokenizer files and print sizes; no weights")
    ap.add_argument("--print-shapes", action="store_true", help="print the tensor table (name, dtype, shape)")
    args = ap.parse_args(argv)
    if args.shape == "tiny":
        path = tm.build(args.out)
        print(json.dumps({"shape": "tiny", "out": str(path), "disk_bytes": disk_bytes(path)}))
        return 0
    shape = SHAPES[args.shape].with_layers(args.layers, args.vision_depth)
    if args.intermediate:
        shape = replace(shape, text_intermediate=args.intermediate)
    if args.print_shapes:
        for line in iter_shape_table(shape):
            print(line)
    summary = build(args.out, shape, init=args.init, device=args.device, shard_gb=args.shard_gb,
                    dry_run=args.dry_run, log=lambda m: print(m, file=sys.stderr, flush=True))
    summary["disk_bytes"] = disk_bytes(args.out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
