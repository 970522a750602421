"""Small synthetic AutoAWQ GEMM checkpoints with the Qwen2.5-VL-72B pathology (an intermediate size
that TP 2/4/8 cannot split into whole AWQ groups), for tests and ``bench/awq_gpu_check.py``.

Layouts:

* ``"qwen2"`` — a complete ``Qwen2ForCausalLM`` that vLLM can load (optionally with a tiny byte-level
  BPE tokenizer trained on the spot; no downloads);
* ``"qwen2_5_vl"`` — original Qwen2.5-VL names (``model.layers.N.*``, ``visual.blocks.N.*``), flat
  config with ``vision_config``;
* ``"qwen2_5_vl_nested"`` — transformers >= 4.52 / 5.x names (``model.language_model.layers.N.*``,
  ``model.visual.blocks.N.*``), sizes in ``text_config``.

The Qwen2.5-VL variants carry a token vision tower (unquantized, its own ``mlp.gate_proj`` with a
different intermediate size) to prove the converter leaves it alone; they are not loadable by vLLM.
Weights are random, quantized with :func:`serve_app.awq.packing.quantize` (round-to-nearest).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import packing

LAYOUTS = ("qwen2", "qwen2_5_vl", "qwen2_5_vl_nested")
TOKENIZER_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Tensor parallel AWQ checkpoints shard their MLP "
    "intermediate dimension across GPUs; padding it with zero rows and columns keeps the output unchanged. "
    "Qwen2.5-VL reads images and video, vLLM serves it, Ray Serve scales it. 0123456789 "
)


@dataclass
class SyntheticCheckpoint:
    path: Path
    layout: str
    prefix: str  # decoder prefix, e.g. "model.layers." or "model.language_model.layers."
    config: dict[str, Any]
    files: list[str]
    eos_token_id: int | None = None
    tensor_names: list[str] = field(default_factory=list)


def _quantized_linear(rng: np.random.Generator, out_f: int, in_f: int, group: int, std: float,
                      name: str, bias: bool) -> dict[str, np.ndarray]:
    w = rng.normal(0.0, std, size=(out_f, in_f))  # nn.Linear orientation [out, in]
    qweight, qzeros, scales = packing.quantize(w.T, group)
    t = {f"{name}.qweight": qweight, f"{name}.qzeros": qzeros, f"{name}.scales": scales}
    if bias:
        t[f"{name}.bias"] = rng.normal(0.0, 0.02, size=(out_f,)).astype(np.float16)
    return t


def _dense(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return rng.normal(0.0, std, size=shape).astype(np.float16)


def train_tokenizer(out_dir: Path, vocab_size: int = 320) -> int:
    """Byte-level BPE trained on a few sentences; writes tokenizer.json + configs; returns the eos id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([TOKENIZER_CORPUS] * 4, trainer=trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "model_max_length": 4096, "clean_up_tokenization_spaces": False,
    }, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=2) + "\n")
    return eos


def build_checkpoint(out_dir: str | Path, *, layout: str = "qwen2", hidden: int = 1024, intermediate: int = 384,
                     layers: int = 2, heads: int = 8, kv_heads: int = 2, vocab: int = 512, group: int = 128,
                     shards: int = 3, seed: int = 0, tokenizer: bool = False, mlp_bias: bool = False,
                     quant_config_file: bool = False, unquantized_mlp_layers: tuple[int, ...] = ()
                     ) -> SyntheticCheckpoint:
    """Write a random AWQ GEMM checkpoint to ``out_dir`` (created) and describe it.

    ``quant_config_file``: put AutoAWQ's ``quant_config.json`` next to config.json instead of a
    ``quantization_config`` entry. ``unquantized_mlp_layers``: those layers' MLPs stay fp16
    ``.weight`` (as with ``modules_to_not_convert``). ``mlp_bias``: give gate/up/down a bias.
    """
    from safetensors.numpy import save_file

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    nested = layout == "qwen2_5_vl_nested"
    lm_prefix = "model.language_model." if nested else "model."
    vis_prefix = "model.visual." if nested else "visual."

    # group 0: embeddings (+ vision tower): no decoder MLP tensors -> copied verbatim by the converter
    groups: list[dict[str, np.ndarray]] = [{f"{lm_prefix}embed_tokens.weight": _dense(rng, (vocab, hidden), 1.0)}]
    vis_hidden, vis_inter = 64, 96
    if layout != "qwen2":
        g0 = groups[0]
        for blk in range(2):
            b = f"{vis_prefix}blocks.{blk}."
            g0[b + "norm1.weight"] = np.ones(vis_hidden, np.float16)
            g0[b + "attn.qkv.weight"] = _dense(rng, (3 * vis_hidden, vis_hidden), 0.1)
            g0[b + "attn.qkv.bias"] = _dense(rng, (3 * vis_hidden,), 0.02)
            g0[b + "attn.proj.weight"] = _dense(rng, (vis_hidden, vis_hidden), 0.1)
            g0[b + "mlp.gate_proj.weight"] = _dense(rng, (vis_inter, vis_hidden), 0.1)
            g0[b + "mlp.gate_proj.bias"] = _dense(rng, (vis_inter,), 0.02)
            g0[b + "mlp.up_proj.weight"] = _dense(rng, (vis_inter, vis_hidden), 0.1)
            g0[b + "mlp.down_proj.weight"] = _dense(rng, (vis_hidden, vis_inter), 0.1)
        g0[vis_prefix + "merger.mlp.0.weight"] = _dense(rng, (4 * vis_hidden, 4 * vis_hidden), 0.05)
        g0[vis_prefix + "merger.mlp.2.weight"] = _dense(rng, (hidden, 4 * vis_hidden), 0.05)

    layer_tensors: list[dict[str, np.ndarray]] = []
    for i in range(layers):
        p = f"{lm_prefix}layers.{i}."
        t: dict[str, np.ndarray] = {
            p + "input_layernorm.weight": np.ones(hidden, np.float16),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float16),
        }
        s_in = 1.0 / math.sqrt(hidden)
        t |= _quantized_linear(rng, heads * head_dim, hidden, group, s_in, p + "self_attn.q_proj", True)
        t |= _quantized_linear(rng, kv_heads * head_dim, hidden, group, s_in, p + "self_attn.k_proj", True)
        t |= _quantized_linear(rng, kv_heads * head_dim, hidden, group, s_in, p + "self_attn.v_proj", True)
        t |= _quantized_linear(rng, hidden, heads * head_dim, group, s_in, p + "self_attn.o_proj", False)
        if i in unquantized_mlp_layers:
            t[p + "mlp.gate_proj.weight"] = _dense(rng, (intermediate, hidden), s_in)
            t[p + "mlp.up_proj.weight"] = _dense(rng, (intermediate, hidden), s_in)
            t[p + "mlp.down_proj.weight"] = _dense(rng, (hidden, intermediate), 1.0 / math.sqrt(intermediate))
            if mlp_bias:
                for proj, n in (("gate_proj", intermediate), ("up_proj", intermediate), ("down_proj", hidden)):
                    t[p + f"mlp.{proj}.bias"] = _dense(rng, (n,), 0.02)
        else:
            t |= _quantized_linear(rng, intermediate, hidden, group, s_in, p + "mlp.gate_proj", mlp_bias)
            t |= _quantized_linear(rng, intermediate, hidden, group, s_in, p + "mlp.up_proj", mlp_bias)
            t |= _quantized_linear(rng, hidden, intermediate, group, 1.0 / math.sqrt(intermediate),
                                   p + "mlp.down_proj", mlp_bias)
        layer_tensors.append(t)
    final = {f"{lm_prefix}norm.weight": np.ones(hidden, np.float16),
             "lm_head.weight": _dense(rng, (vocab, hidden), 4.0 / math.sqrt(hidden))}

    # shards: [embeddings(+vision)], then decoder layers spread over the rest, final norm + lm_head last
    rest = max(1, shards - 1)
    buckets: list[dict[str, np.ndarray]] = [dict() for _ in range(rest)]
    for i, t in enumerate(layer_tensors):
        buckets[min(rest - 1, i * rest // max(1, layers))] |= t
    buckets[-1] |= final
    groups += [b for b in buckets if b]
    n = len(groups)
    files, weight_map, total = [], {}, 0
    for k, tensors in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        files.append(fname)
        for name, arr in tensors.items():
            weight_map[name] = fname
            total += arr.nbytes
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2)
        + "\n")

    quant = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
             "modules_to_not_convert": None if layout == "qwen2" else ["visual"]}
    if unquantized_mlp_layers:
        skip = [f"{lm_prefix}layers.{i}.mlp" for i in unquantized_mlp_layers]
        quant["modules_to_not_convert"] = (quant["modules_to_not_convert"] or []) + skip
    text = {
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "use_sliding_window": False, "max_window_layers": layers, "attention_dropout": 0.0,
    }
    eos = train_tokenizer(out) if tokenizer else None
    if eos is not None:
        text["eos_token_id"] = text["bos_token_id"] = eos
    vision = {"depth": 2, "hidden_size": vis_hidden, "intermediate_size": vis_inter, "num_heads": 4,
              "out_hidden_size": hidden, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if layout == "qwen2":
        config: dict[str, Any] = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **text,
                                  "tie_word_embeddings": False, "torch_dtype": "float16"}
    elif layout == "qwen2_5_vl":
        config = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", **text,
                  "tie_word_embeddings": False, "torch_dtype": "float16", "vision_config": vision}
    else:
        config = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
                  "text_config": {**text, "model_type": "qwen2_5_vl_text", "torch_dtype": "float16"},
                  "vision_config": vision, "tie_word_embeddings": False, "torch_dtype": "float16"}
    if quant_config_file:
        (out / "quant_config.json").write_text(json.dumps(
            {"zero_point": True, "q_group_size": group, "w_bit": 4, "version": "GEMM"}, indent=2) + "\n")
    else:
        config["quantization_config"] = quant
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if eos is not None:
        (out / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": eos, "eos_token_id": eos, "do_sample": False}, indent=2) + "\n")
    names = [name for g in groups for name in g]
    return SyntheticCheckpoint(out, layout, f"{lm_prefix}layers.", config, files, eos, names)


def load_tensors(model_dir: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a (small) checkpoint as numpy arrays."""
    from safetensors.numpy import load_file

    model_dir = Path(model_dir)
    out: dict[str, np.ndarray] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out |= load_file(str(f))
    return out


def mlp_weights(tensors: dict[str, np.ndarray], layer_prefix: str, group: int) -> dict[str, np.ndarray]:
    """float64 ``[in, out]`` gate/up/down weights (dequantized, or the fp16 ``.weight`` transposed)."""
    out = {}
    for proj in ("gate_proj", "up_proj", "down_proj"):
        b = f"{layer_prefix}mlp.{proj}."
        if b + "qweight" in tensors:
            out[proj] = packing.dequantize(tensors[b + "qweight"], tensors[b + "qzeros"], tensors[b + "scales"], group)
        else:
            out[proj] = tensors[b + "weight"].astype(np.float64).T
        bias = tensors.get(b + "bias")
        out[proj + ".bias"] = bias.astype(np.float64) if bias is not None else None
    return out


def mlp_forward(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """float64 reference of the Qwen2 MLP: down(SiLU(gate(x)) * up(x))."""
    def lin(v: np.ndarray, proj: str) -> np.ndarray:
        y = v @ w[proj]
        return y + w[proj + ".bias"] if w.get(proj + ".bias") is not None else y

    g = lin(x, "gate_proj")
    return lin(g / (1.0 + np.exp(-g)) * lin(x, "up_proj"), "down_proj")


def corrupt_padding(model_dir: str | Path, old_size: int, group: int, seed: int = 1) -> int:
    """Negative control: give the *padded* MLP neurons of a padded checkpoint real-looking weights
    (random q, zero-point 8, typical scales), so its outputs must differ from the original's.
    Returns the number of tensors changed."""
    from safetensors.numpy import load_file, save_file

    from .shapes import match_mlp_tensor

    rng = np.random.default_rng(seed)
    changed = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        tensors = load_file(str(f))
        touched = False
        for name, arr in list(tensors.items()):
            m = match_mlp_tensor(name)
            if not m or m["param"] not in ("qweight", "qzeros", "scales"):
                continue
            arr = arr.copy()
            if m["proj"] in ("gate_proj", "up_proj"):  # padded output columns
                sl = np.s_[:, old_size:] if m["param"] == "scales" else np.s_[:, old_size // 8:]
            else:  # down_proj: padded input rows / groups
                sl = np.s_[old_size:] if m["param"] == "qweight" else np.s_[old_size // group:]
            if m["param"] == "scales":
                arr[sl] = np.float16(np.abs(tensors[name].astype(np.float32)).max() / 2)
            else:
                full = arr.shape[1] * 8
                vals = (np.full((arr.shape[0], full), 8, np.uint8) if m["param"] == "qzeros"
                        else rng.integers(0, 16, size=(arr.shape[0], full), dtype=np.uint8))
                arr[sl] = packing.pack(vals)[sl]
            tensors[name] = arr
            touched = True
            changed += 1
        if touched:
            save_file(tensors, str(f), metadata={"format": "pt"})
    return changed
