"""Shape preflight: will vLLM be able to shard this AWQ checkpoint at tensor-parallel size N?

Runs in milliseconds from ``config.json``, the quantization config and the safetensors headers
(no tensor data is read), so the engine can refuse *before* vLLM spends minutes loading weights
and then fails with "The input size is not aligned with the quantized weight shape" or
"input_size_per_partition ... is not divisible by min_thread_k = 128".

What is checked, for every requested TP and every tensor-parallel linear of the decoder
(Qwen2 / Qwen2.5-VL language model) — the rules vLLM applies in ``create_weights``:

* column-parallel (``qkv_proj`` = q/k/v, ``gate_up_proj`` = gate/up; N sharded) and row-parallel
  (``o_proj``, ``down_proj``; K sharded) per-partition sizes;
* AWQ (``awq.py``; fatal): ``input_size_per_partition % group_size == 0``,
  output per partition (each merged part) ``% 8 == 0`` (pack factor);
* AWQ-Marlin (``marlin_utils.verify_marlin_supports_shape``): ``K % 128``, ``N % 64``,
  ``K % group_size``.  When only these fail, vLLM (<= 0.2x ``awq_marlin.py``) falls back to
  the slow unfused AWQ kernel, or (0.3x ``auto_awq.py``) pads tiles on every forward: it loads,
  but slowly — reported as non-fatal problems;
* head counts divisible by TP (vLLM refuses otherwise; padding cannot fix that);
* config vs. weights: ``intermediate_size`` must match the MLP tensors in the safetensors
  headers (catches a config.json edited by hand without padding the weights).

Non-AWQ models (unquantized, GPTQ, FP8, ...) pass: nothing to check.  A ``model_dir`` that is not
a local directory (a Hugging Face hub id) cannot be checked without downloading, so
:func:`check` returns ``[]`` and :func:`require_tp_compatible` returns silently; download or
mount the checkpoint and point the engine at the directory to get the preflight.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .shapes import (
    AWQ_PACK_FACTOR,
    GPTQ_MARLIN_MIN_THREAD_K,
    GPTQ_MARLIN_MIN_THREAD_N,
    MARLIN_SUPPORTED_GROUP_SIZES,
    AwqConfigError,
    QuantConfig,
    ShardedLinear,
    TextShapes,
    decoder_linears,
    is_vision_name,
    iter_tensor_headers,
    load_config,
    load_quant_config,
    match_mlp_tensor,
    partition,
)

__all__ = [
    "AwqConfigError",
    "AwqShapeError",
    "ShapeProblem",
    "check",
    "fix_command",
    "padded_intermediate_size",
    "require_tp_compatible",
]


@dataclass(frozen=True)
class ShapeProblem:
    """One dimension of one linear layer that vLLM cannot use at one TP size."""

    tp: int  # 0: independent of the TP size (config/weights mismatch)
    layer: str  # vLLM module, e.g. "mlp.down_proj"
    dimension: str  # "input_size_per_partition", "output_size_per_partition", "heads", "intermediate_size"
    size: int  # full (unsharded) size of that dimension
    per_partition: int | None  # size on one rank (None when it cannot even be split)
    constraints: tuple[str, ...]  # what it violates, human-readable
    fatal: bool  # True: vLLM refuses to load; False: loads on a slower kernel
    fixable_by_padding: bool  # True: `python -m serve_app.awq pad` removes it
    message: str

    def __str__(self) -> str:
        return self.message


class AwqShapeError(ValueError):
    """Raised by :func:`require_tp_compatible`; ``problems`` lists every violation."""

    def __init__(self, message: str, problems: list[ShapeProblem], fix: str | None = None):
        super().__init__(message)
        self.problems = problems
        self.fix_command = fix


# --- constraint evaluation -------------------------------------------------------------------


def _violations(linear: ShardedLinear, s: TextShapes, tp: int, q: QuantConfig) -> list[ShapeProblem]:
    fixable_key = linear.sharded_dim_key == "intermediate_size"
    part = partition(linear, s, tp)
    if isinstance(part, str):
        size = linear.input_size if linear.parallel == "row" else sum(linear.output_sizes)
        return [
            ShapeProblem(tp, linear.name, "heads" if "heads" in part else linear.sharded_dim_key, size, None,
                         (part,), True, fixable_key,
                         f"TP {tp}: {linear.name}: {part}; vLLM cannot split it"
                         + ("" if fixable_key else " (padding the MLP does not change this: use another TP size)"))
        ]
    group = q.group_size if q.group_size and q.group_size > 0 else linear.input_size
    marlin = q.bits == 4 and q.group_size in MARLIN_SUPPORTED_GROUP_SIZES
    k = part.input_size_per_partition
    n = part.output_size_per_partition
    k_desc = (f"{linear.sharded_dim_key} {linear.input_size} / {tp} = {k}" if linear.parallel == "row"
              else f"{k} (hidden_size, not sharded)")
    n_desc = (" + ".join(str(x) for x in part.output_partition_sizes) + f" = {n}"
              if len(part.output_partition_sizes) > 1 else str(n))
    if linear.parallel == "column":
        n_desc = f"{linear.sharded_dim_key} split by {tp}: {n_desc}"

    out: list[ShapeProblem] = []
    # K: input_size_per_partition
    k_fatal, k_soft = [], []
    if k % group:
        k_fatal.append(f"a multiple of the AWQ group_size {group} (vLLM awq: 'The input size is not aligned "
                       "with the quantized weight shape'; awq_marlin: 'not divisible by group_size')")
    if marlin and k % GPTQ_MARLIN_MIN_THREAD_K:
        k_soft.append(f"a multiple of Marlin min_thread_k {GPTQ_MARLIN_MIN_THREAD_K}")
    if k_fatal or k_soft:
        cons = tuple(k_fatal + k_soft)
        out.append(ShapeProblem(
            tp, linear.name, "input_size_per_partition", linear.input_size, k, cons, bool(k_fatal), fixable_key,
            f"TP {tp}: {linear.name} input_size_per_partition = {k_desc} is not " + " and not ".join(cons)
            + ("" if k_fatal else " -> vLLM falls back from Marlin to the slow AWQ kernel"),
        ))
    # N: output_size_per_partition
    n_fatal, n_soft = [], []
    bad_parts = [x for x in part.output_partition_sizes if x % AWQ_PACK_FACTOR]
    if bad_parts:
        n_fatal.append(f"a multiple of the AWQ pack factor {AWQ_PACK_FACTOR} in every merged part "
                       f"(vLLM awq: 'The output size is not aligned with the quantized weight shape')")
    if marlin and n % GPTQ_MARLIN_MIN_THREAD_N:
        n_soft.append(f"a multiple of Marlin min_thread_n {GPTQ_MARLIN_MIN_THREAD_N}")
    if n_fatal or n_soft:
        cons = tuple(n_fatal + n_soft)
        out.append(ShapeProblem(
            tp, linear.name, "output_size_per_partition", sum(linear.output_sizes), n, cons, bool(n_fatal),
            fixable_key,
            f"TP {tp}: {linear.name} output_size_per_partition = {n_desc} is not " + " and not ".join(cons)
            + ("" if n_fatal else " -> vLLM falls back from Marlin to the slow AWQ kernel"),
        ))
    return out


def _mlp_problems(s: TextShapes, tp: int, q: QuantConfig) -> list[ShapeProblem]:
    return [p for lin in decoder_linears(s) if lin.name.startswith("mlp.") for p in _violations(lin, s, tp, q)]


def padded_intermediate_size(intermediate_size: int, group_size: int, tp_sizes: Iterable[int],
                             hidden_size: int | None = None) -> int:
    """Smallest ``intermediate_size' >= intermediate_size`` that every TP in ``tp_sizes`` accepts
    for ``gate_up_proj`` and ``down_proj`` under both the AWQ and the AWQ-Marlin rules
    (29568 -> 29696 for TP 2/4/8 with group 128)."""
    tps = sorted(set(int(t) for t in tp_sizes))
    if not tps or min(tps) < 1:
        raise ValueError(f"tp_sizes must be positive integers, got {tps}")
    hidden = hidden_size or max(group_size, 128)
    s = TextShapes(hidden, intermediate_size, 1, 1, 1, 1, "synthetic")
    q = QuantConfig("awq", 4, group_size, True, "gemm", (), "synthetic")
    size = intermediate_size
    limit = intermediate_size + 8 * max(group_size, 128) * max(tps) * len(tps) + 1
    while size <= limit:
        cand = dataclasses.replace(s, intermediate_size=size)
        if not any(_mlp_problems(cand, tp, q) for tp in tps):
            return size
        size += 1
    raise ValueError(f"no intermediate size found for {intermediate_size}, group {group_size}, TP {tps}")


@dataclass
class _HeaderScan:
    sizes: dict[int, str]  # intermediate size implied by an MLP tensor -> an example tensor name
    quantized: set[str]  # decoder projections ("q_proj", ..., "down_proj") with a .qweight anywhere
    any_weights: bool


def _scan_headers(model_dir: Path) -> _HeaderScan | None:
    """Decoder MLP sizes and which decoder projections are quantized, from safetensors headers only."""
    scan = _HeaderScan({}, set(), False)
    projs = {h for lin in _ALL_HF for h in lin}
    try:
        for _file, name, info in iter_tensor_headers(model_dir):
            scan.any_weights = True
            if is_vision_name(name):
                continue
            if name.endswith(".qweight"):
                module = name[: -len(".qweight")].rsplit(".", 1)[-1]
                if module in projs:
                    scan.quantized.add(module)
            m = match_mlp_tensor(name)
            if not m or m["proj"] not in ("gate_proj", "up_proj", "down_proj"):
                continue
            shape = info.get("shape") or []
            if len(shape) != 2:
                continue
            param, proj = m["param"], m["proj"]
            if param == "qweight":  # GEMM layout [in, out/8]
                size = shape[1] * AWQ_PACK_FACTOR if proj != "down_proj" else shape[0]
            elif param == "weight":  # unquantized nn.Linear [out, in]
                size = shape[0] if proj != "down_proj" else shape[1]
            else:
                continue
            scan.sizes.setdefault(size, name)
    except (OSError, ValueError):
        return None  # unreadable headers: vLLM will say so; the config-based checks still stand
    return scan


_ALL_HF = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


def _weights_problems(scan: _HeaderScan, s: TextShapes) -> list[ShapeProblem]:
    """config.json's intermediate_size must match the decoder MLP tensors' shapes."""
    bad = {size: name for size, name in scan.sizes.items() if size != s.intermediate_size}
    if not bad:
        return []
    size, name = sorted(bad.items())[0]
    return [ShapeProblem(
        0, "mlp", "intermediate_size", s.intermediate_size, None,
        (f"equal to the weights' {size}",), True, False,
        f"config.json ({s.source}) says intermediate_size {s.intermediate_size} but the weights have {size} "
        f"(e.g. {name}): the config was changed without padding the tensors. Restore the original "
        f"intermediate_size and run `python -m serve_app.awq pad` on the original checkpoint.",
    )]


def _load(model_dir: str | os.PathLike) -> tuple[TextShapes, QuantConfig] | None:
    cfg = load_config(model_dir)
    q = load_quant_config(model_dir, cfg)
    if q is None or not q.is_awq:
        return None
    return TextShapes.from_config(cfg), q


def check(model_dir: str | os.PathLike, tp_sizes: Iterable[int]) -> list[ShapeProblem]:
    """Every problem vLLM would hit sharding the AWQ checkpoint at ``model_dir`` over each TP size.

    Empty list: fine (or nothing to check: non-AWQ model, or ``model_dir`` is not a local
    directory, e.g. a hub id).  Raises :class:`AwqConfigError` (a ValueError) when a local
    directory has no readable config.json.
    """
    tps = [int(t) for t in tp_sizes]
    if any(t < 1 for t in tps):
        raise ValueError(f"tensor-parallel sizes must be >= 1, got {tps}")
    path = Path(os.fspath(model_dir)).expanduser()
    if not path.is_dir():
        return []
    loaded = _load(path)
    if loaded is None:
        return []
    s, q = loaded
    problems: list[ShapeProblem] = []
    scan = _scan_headers(path)
    if scan is not None and q.version in (None, "gemm"):
        problems += _weights_problems(scan, s)
    for lin in decoder_linears(s):
        # a projection kept in fp16 everywhere (modules_to_not_convert) has no AWQ constraint
        if scan is not None and scan.any_weights and not scan.quantized & set(lin.hf_names):
            continue
        for tp in tps:
            problems += _violations(lin, s, tp, q)
    problems.sort(key=lambda p: p.tp)
    return problems


def fix_command(model_dir: str | os.PathLike, tp_sizes: Iterable[int], new_size: int | None = None) -> str:
    src = os.fspath(model_dir).rstrip("/") or "/"
    dst = f"{src}-i{new_size}" if new_size else f"{src}-tp-padded"
    tps = " ".join(str(t) for t in sorted(set(int(t) for t in tp_sizes)))
    return f"python -m serve_app.awq pad {shlex.quote(src)} {shlex.quote(dst)} --tp {tps}"


def format_report(model_dir: str | os.PathLike, problems: list[ShapeProblem], tp_sizes: Iterable[int]) -> str:
    """Multi-line human report with the fix (used by the CLI and the exception)."""
    tps = sorted(set(int(t) for t in tp_sizes))
    lines = [f"{os.fspath(model_dir)}: vLLM cannot shard this AWQ checkpoint at TP {' '.join(map(str, tps))}:"]
    lines += [f"  - {p.message}" + ("" if p.fatal else " [non-fatal]") for p in problems]
    fixable = [p for p in problems if p.fixable_by_padding]
    unfixable = [p for p in problems if not p.fixable_by_padding]
    if fixable:
        loaded = _load(model_dir)
        new = None
        if loaded is not None and loaded[1].group_size:
            s, q = loaded
            new = padded_intermediate_size(s.intermediate_size, q.group_size, tps, s.hidden_size)
            lines.append(
                f"Fix (lossless, no re-quantization): pad the MLP intermediate_size {s.intermediate_size} -> {new} "
                f"with zero rows/columns in the packed AWQ tensors, then serve the new directory:"
            )
        lines.append(f"  {fix_command(model_dir, tps, new)}")
    if unfixable:
        lines.append("Not fixable by padding the MLP: " + "; ".join(p.message for p in unfixable))
    return "\n".join(lines)


def require_tp_compatible(model_dir: str | os.PathLike, tensor_parallel_size: int, *,
                          allow_slow_fallback: bool = False) -> None:
    """Raise :class:`AwqShapeError` when vLLM cannot shard the AWQ checkpoint ``model_dir`` over
    ``tensor_parallel_size`` GPUs; the message names the dimension, its size, the TP and the exact
    ``python -m serve_app.awq pad SRC DST --tp N`` command that fixes it.

    Headers only: takes milliseconds, so call it before starting vLLM. By default also refuses
    shapes where vLLM would silently fall back from Marlin to the slow AWQ kernel; pass
    ``allow_slow_fallback=True`` to accept those. Returns silently for non-AWQ models and for a
    ``model_dir`` that is not a local directory (hub id: cannot be checked without a download).
    """
    tp = int(tensor_parallel_size)
    problems = check(model_dir, [tp])
    if allow_slow_fallback:
        problems = [p for p in problems if p.fatal]
    if not problems:
        return
    fixable = [p for p in problems if p.fixable_by_padding]
    fix = fix_command(model_dir, [tp]) if fixable else None
    message = format_report(model_dir, problems, [tp])
    if fix is not None:
        fix = next((ln.strip() for ln in message.splitlines() if ln.strip().startswith("python -m serve_app.awq pad")),
                   fix)
    raise AwqShapeError(message, problems, fix)
