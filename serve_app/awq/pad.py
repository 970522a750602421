"""Pad the MLP intermediate dimension of an AutoAWQ GEMM checkpoint, directly in the packed tensors.

``gate_proj`` / ``up_proj`` (column-parallel, N = intermediate) get zero output columns appended
to ``qweight`` / ``qzeros`` (whole int32 words, 8 columns each) and ``scales``; ``down_proj``
(row-parallel, K = intermediate) gets zero input rows appended to ``qweight`` and zero groups to
``qzeros`` / ``scales``.  Padded entries are q = 0, zero-point = 0, scale = 0, so they dequantize
to exactly ``(0 - 0) * 0 = 0``: the padded gate/up outputs are 0, SiLU(0) * 0 = 0 feeds the padded
down_proj rows, which are 0 themselves — the MLP output is unchanged, bit for bit in exact
arithmetic.  No re-quantization, no calibration data: the real weights are copied byte for byte.

The converter streams: it reads safetensors headers, copies shards without MLP tensors verbatim,
and rewrites the others tensor by tensor (peak memory about one tensor, at most one shard), so a
72B checkpoint needs about its own size in free disk and little RAM.

Supported: see :data:`serve_app.awq.shapes.SUPPORTED_VARIANTS` (AWQ GEMM, 4-bit, zero_point, group
size > 0, safetensors). Refused with a message: AWQ GEMV / GEMV_fast / exllama / marlin / ipex
formats, GPTQ (packed along the input dim, optional act-order g_idx), other quantization methods,
unquantized checkpoints (nothing to do: vLLM shards them), fused ``gate_up_proj`` and MoE MLPs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .preflight import _violations, padded_intermediate_size
from .shapes import (
    AWQ_PACK_FACTOR,
    CONFIG_FILE,
    INDEX_FILE,
    MLP_PROJS,
    SUPPORTED_VARIANTS,
    VISION_MARKERS,
    AwqConfigError,
    QuantConfig,
    TextShapes,
    decoder_linears,
    load_config,
    load_quant_config,
    match_mlp_tensor,
    read_json,
    read_safetensors_header,
    weight_files,
)

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32")
_COPY_CHUNK = 64 * 1024 * 1024
# A bar even where stderr is no terminal (a Kubernetes job's log): copying a 72B checkpoint takes
# minutes per shard, and the per-shard lines alone leave the log silent that long.
LARGE_CHECKPOINT_BYTES = 2 << 30
_LOG_BAR_INTERVAL_S = 30.0  # a log gets one progress line per interval, not a redraw per chunk


class UnsupportedCheckpoint(ValueError):
    """The converter does not handle this checkpoint; the message says why and what it supports."""


def _refuse(reason: str) -> UnsupportedCheckpoint:
    return UnsupportedCheckpoint(f"{reason}.\nSupported: {SUPPORTED_VARIANTS}.")


@dataclass(frozen=True)
class TensorPad:
    """Append zeros to ``axis`` of one tensor, from ``shape`` to ``new_shape``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    new_shape: tuple[int, ...]

    @property
    def axis(self) -> int:
        return next(i for i, (a, b) in enumerate(zip(self.shape, self.new_shape)) if a != b)


@dataclass
class PadPlan:
    src: Path
    tp_sizes: tuple[int, ...]
    old_size: int
    new_size: int
    group_size: int
    shapes: TextShapes
    quant: QuantConfig
    files: list[str]
    pads: dict[str, dict[str, TensorPad]]  # file -> tensor name -> pad
    headers: dict[str, tuple[dict[str, Any], int]] = field(repr=False, default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.new_size != self.old_size

    @property
    def num_padded_tensors(self) -> int:
        return sum(len(v) for v in self.pads.values())


@dataclass
class PadReport:
    src: str
    dst: str | None
    old_size: int
    new_size: int
    tp_sizes: tuple[int, ...]
    padded_tensors: int = 0
    rewritten_files: list[str] = field(default_factory=list)
    copied_files: list[str] = field(default_factory=list)
    config_keys: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.new_size != self.old_size


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _interactive(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def want_progress_bar(total_bytes: int, stream: Any = None) -> bool:
    """The ``auto`` choice: a bar on a terminal, and on any stream for a large checkpoint."""
    return _interactive(sys.stderr if stream is None else stream) or total_bytes >= LARGE_CHECKPOINT_BYTES


class _LogLines:
    """What tqdm writes, as whole lines: a log collector splits on newlines, so tqdm's carriage-return
    redraws would otherwise pile up into one ever-growing line."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\r", "\n").split("\n"):
            part = part.rstrip()
            if part:
                self._stream.write(part + "\n")

    def flush(self) -> None:
        self._stream.flush()


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_description_str(self, text: str, refresh: bool = True) -> None: ...
    def set_postfix_str(self, text: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total_bytes: int, enabled: bool) -> Any:
    """A bytes bar on stderr (tqdm), or a stand-in that does nothing."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    stream = sys.stderr
    interactive = _interactive(stream)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=interactive,
                file=stream if interactive else _LogLines(stream), ascii=not interactive,
                mininterval=0.5 if interactive else _LOG_BAR_INTERVAL_S, leave=True)


class _Counted:
    """A binary file whose writes advance the bar: progress inside a multi-GiB tensor, not only after it."""

    def __init__(self, f: Any, bar: Any) -> None:
        self._f, self._bar = f, bar

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._bar.update(memoryview(data).nbytes)
        return n


def _copy_file(src: Path, dst: Path, bar: Any) -> None:
    if isinstance(bar, _NoBar):
        shutil.copyfile(src, dst)
        return
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        _copy_bytes(fin, _Counted(fout, bar), os.path.getsize(src), src.name)
    shutil.copymode(src, dst)


# --- planning (validation, no writes) ----------------------------------------------------------


def _expected(proj: str, param: str, h: int, i: int, g: int) -> tuple[tuple[int, ...], str] | None:
    """(GEMM-layout shape, dtype family) of an MLP tensor with intermediate size ``i``."""
    p = AWQ_PACK_FACTOR
    if proj in ("gate_proj", "up_proj"):
        return {
            "qweight": ((h, i // p), "I32"),
            "qzeros": ((h // g, i // p), "I32"),
            "scales": ((h // g, i), "float"),
            "bias": ((i,), "float"),
            "weight": ((i, h), "float"),
        }.get(param)
    return {
        "qweight": ((i, h // p), "I32"),
        "qzeros": ((i // g, h // p), "I32"),
        "scales": ((i // g, h), "float"),
        "bias": ((h,), "float"),
        "weight": ((h, i), "float"),
    }.get(param)


def plan(src_dir: str | os.PathLike, tp_sizes: Iterable[int], *, target: int | None = None) -> PadPlan:
    """Validate ``src_dir`` and work out every tensor to pad. Raises :class:`UnsupportedCheckpoint`."""
    src = Path(src_dir).expanduser()
    tps = tuple(sorted(set(int(t) for t in tp_sizes)))
    if not tps or tps[0] < 1:
        raise ValueError(f"--tp needs positive integers, got {list(tp_sizes)}")
    if not src.is_dir():
        raise _refuse(f"{src} is not a local directory (download the checkpoint first)")
    try:
        cfg = load_config(src)
        q = load_quant_config(src, cfg)
        s = TextShapes.from_config(cfg)
    except AwqConfigError as exc:
        raise _refuse(str(exc)) from exc
    if q is None:
        raise _refuse(f"{src} is not quantized (no quantization_config / quant_config.json): vLLM shards "
                      "unquantized weights at any TP that divides the sizes, nothing to pad")
    if q.method == "gptq":
        raise _refuse("GPTQ checkpoint: GPTQ packs qweight along the input dim ([in/8, out]) and may carry "
                      "act-order g_idx; this converter handles AWQ GEMM only")
    reason = q.unsupported_reason()
    if reason:
        raise _refuse(f"{src}: {reason} ({q.source})")
    g = int(q.group_size)
    h, i_old = s.hidden_size, s.intermediate_size
    if h % g or i_old % g or i_old % AWQ_PACK_FACTOR:
        raise _refuse(f"hidden_size {h} / intermediate_size {i_old} are not multiples of group_size {g}: "
                      "not a valid AWQ GEMM checkpoint")

    # Attention problems are not fixable here: refuse rather than produce a checkpoint that still fails.
    blocking = [p for tp in tps for lin in decoder_linears(s) if not lin.name.startswith("mlp.")
                for p in _violations(lin, s, tp, q) if p.fatal]
    if blocking:
        raise _refuse("padding the MLP cannot make these TP sizes work: "
                      + "; ".join(p.message for p in blocking) + " -- drop them from --tp")

    new = padded_intermediate_size(i_old, g, tps, h)
    if target is not None:
        if target < i_old or target % g or target % AWQ_PACK_FACTOR:
            raise ValueError(f"--target {target} must be >= {i_old} and a multiple of group_size {g} and 8")
        probe = dataclass_replace_size(s, target)
        bad = [p.message for tp in tps for lin in decoder_linears(probe) if lin.name.startswith("mlp.")
               for p in _violations(lin, probe, tp, q)]
        if bad:
            raise ValueError(f"--target {target} does not satisfy TP {list(tps)}: {bad[0]}")
        new = target

    files = weight_files(src)
    if not files:
        others = sorted(p.name for p in src.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
        raise _refuse(f"{src} has no *.safetensors weights" + (f" (found {others[:3]})" if others else ""))

    pads: dict[str, dict[str, TensorPad]] = {}
    headers: dict[str, tuple[dict[str, Any], int]] = {}
    found: dict[str, dict[tuple[int, str], set[str]]] = {}  # prefix -> (layer, proj) -> params
    for fname in files:
        path = src / fname
        if not path.is_file():
            raise _refuse(f"{fname} is listed in {INDEX_FILE} but missing")
        try:
            header, start = read_safetensors_header(path)
        except (AwqConfigError, ValueError, OSError) as exc:
            raise _refuse(f"{fname}: cannot read safetensors header: {exc}") from exc
        headers[fname] = (header, start)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            m = match_mlp_tensor(name)
            if not m:
                continue
            proj, param, layer = m["proj"], m["param"], int(m["layer"])
            if proj not in MLP_PROJS:
                kind = "fused gate_up_proj" if proj == "gate_up_proj" else f"mlp.{proj}"
                raise _refuse(f"{name}: {kind} is not a dense gate/up/down MLP tensor (fused or MoE MLPs "
                              "are not handled)")
            exp = _expected(proj, param, h, i_old, g)
            if exp is None:
                raise _refuse(f"{name}: unexpected MLP parameter {param!r} (g_idx/act-order or another "
                              "quantization layout)")
            shape, family = exp
            dtype = info.get("dtype")
            got = tuple(info.get("shape") or ())
            if got != shape or (family == "I32" and dtype != "I32") or (family == "float" and dtype not in FLOAT_DTYPES):
                hint = ""
                if param == "qweight" and len(got) == 2:
                    hint = " (GEMV / GEMV_fast / GPTQ layouts pack along the input dim; only GEMM is handled)"
                want = "I32" if family == "I32" else "/".join(FLOAT_DTYPES)
                raise _refuse(f"{name}: expected {want} {list(shape)} for AWQ GEMM with hidden_size {h}, "
                              f"intermediate_size {i_old}, group_size {g}; found {dtype} {list(got)}{hint}")
            found.setdefault(m["prefix"], {}).setdefault((layer, proj), set()).add(param)
            new_shape, _ = _expected(proj, param, h, new, g)
            if new_shape != shape:
                pads.setdefault(fname, {})[name] = TensorPad(name, dtype, shape, new_shape)

    if not found:
        raise _refuse(f"no decoder MLP tensors (*.layers.N.mlp.gate_proj/up_proj/down_proj.*) in {src}")
    for prefix, entries in found.items():
        for layer in range(s.num_hidden_layers):
            for proj in MLP_PROJS:
                params = entries.get((layer, proj), set())
                if not ({"qweight", "qzeros", "scales"} <= params or "weight" in params):
                    raise _refuse(f"{prefix}layers.{layer}.mlp.{proj}: incomplete (found {sorted(params) or 'nothing'})"
                                  f"; expected qweight+qzeros+scales (AWQ) or weight (unquantized)")
        extra = sorted({layer for layer, _ in entries if layer >= s.num_hidden_layers})
        if extra:
            raise _refuse(f"{prefix}layers.{extra[0]}.mlp exists but num_hidden_layers is {s.num_hidden_layers}")
    return PadPlan(src, tps, i_old, new, g, s, q, files, pads, headers)


def dataclass_replace_size(s: TextShapes, size: int) -> TextShapes:
    return dataclasses.replace(s, intermediate_size=size)


# --- writing -------------------------------------------------------------------------------------


def _copy_bytes(fin, fout, n: int, what: str) -> None:
    while n:
        chunk = fin.read(min(n, _COPY_CHUNK))
        if not chunk:
            raise IOError(f"truncated tensor {what}")
        fout.write(chunk)
        n -= len(chunk)


def _write_zeros(fout, n: int) -> None:
    zeros = bytes(min(n, _COPY_CHUNK))
    while n:
        k = min(n, len(zeros))
        fout.write(zeros[:k] if k < len(zeros) else zeros)
        n -= k


def write_padded(fin, fout, pad: TensorPad) -> None:
    """Stream one tensor from ``fin`` to ``fout`` with zeros appended along ``pad.axis``, in chunks
    of at most ~64 MiB (zero bytes are 0 / +0.0 for every safetensors dtype)."""
    item = DTYPE_SIZES[pad.dtype]
    src_n = _nbytes(pad.dtype, pad.shape)
    if len(pad.shape) == 1 or pad.axis == 0:  # appended rows: the original bytes, then zeros
        _copy_bytes(fin, fout, src_n, pad.name)
        _write_zeros(fout, _nbytes(pad.dtype, pad.new_shape) - src_n)
        return
    rows, cols = pad.shape
    row_in, row_out = cols * item, pad.new_shape[1] * item
    step = max(1, _COPY_CHUNK // row_out)
    for r0 in range(0, rows, step):
        n = min(step, rows - r0)
        buf = fin.read(n * row_in)
        if len(buf) != n * row_in:
            raise IOError(f"truncated tensor {pad.name}")
        out = np.zeros((n, row_out), dtype=np.uint8)
        out[:, :row_in] = np.frombuffer(buf, dtype=np.uint8).reshape(n, row_in)
        fout.write(out.data)


def _nbytes(dtype: str, shape: Iterable[int]) -> int:
    return math.prod(shape) * DTYPE_SIZES[dtype]


def rewrite_shard(src_path: Path, dst_path: Path, header: dict[str, Any], data_start: int,
                  pads: dict[str, TensorPad], bar: Any = None) -> int:
    """Write ``dst_path``: same tensors, same order, ``pads`` applied; others copied byte for byte.
    ``bar`` (optional, tqdm-like) advances by the bytes written and names the tensor being written.
    Returns the data size in bytes."""
    names = [n for n in header if n != "__metadata__"]
    by_offset = sorted(names, key=lambda n: header[n]["data_offsets"][0])
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for n in by_offset:
        info = header[n]
        if n in pads:
            size = _nbytes(info["dtype"], pads[n].new_shape)
        else:
            b, e = info["data_offsets"]
            size = e - b
        offsets[n] = (pos, pos + size)
        pos += size
    new_header: dict[str, Any] = {}
    if "__metadata__" in header:
        new_header["__metadata__"] = header["__metadata__"]
    for n in names:  # keep the source's key order
        info = header[n]
        shape = list(pads[n].new_shape) if n in pads else info["shape"]
        new_header[n] = {"dtype": info["dtype"], "shape": shape, "data_offsets": list(offsets[n])}
    raw = json.dumps(new_header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(src_path, "rb") as fin, open(dst_path, "wb") as raw_out:
        raw_out.write(struct.pack("<Q", len(raw)))
        raw_out.write(raw)
        fout = raw_out if bar is None else _Counted(raw_out, bar)  # the bar counts tensor bytes
        for n in by_offset:
            b, e = header[n]["data_offsets"]
            if bar is not None:
                bar.set_postfix_str(n, refresh=False)
            fin.seek(data_start + b)
            if n in pads:
                if e - b != _nbytes(header[n]["dtype"], pads[n].shape):
                    raise IOError(f"{src_path}: tensor {n} has {e - b} bytes, expected {pads[n].shape}")
                write_padded(fin, fout, pads[n])
            else:
                _copy_bytes(fin, fout, e - b, n)
    return pos


def _data_bytes(header: dict[str, Any], pads: dict[str, TensorPad]) -> int:
    """Tensor bytes of a shard once ``pads`` are applied (what :func:`rewrite_shard` writes after the header)."""
    return sum(_nbytes(info["dtype"], pads[n].new_shape) if n in pads
               else info["data_offsets"][1] - info["data_offsets"][0]
               for n, info in header.items() if n != "__metadata__")


def _update_config(cfg: dict[str, Any], old: int, new: int, path: str = "") -> list[str]:
    """Set every ``intermediate_size == old`` outside vision sub-configs to ``new``; returns the keys."""
    changed = []
    for key, value in cfg.items():
        where = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            if any(m in key.lower() for m in VISION_MARKERS):
                continue
            changed += _update_config(value, old, new, where)
        elif key == "intermediate_size" and value == old:
            cfg[key] = new
            changed.append(where)
    return changed


def _copy_tree_except(src: Path, dst: Path, skip: set[str]) -> list[str]:
    copied = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        rel_root = Path(root).relative_to(src)
        for f in sorted(files):
            rel = (rel_root / f).as_posix()
            if rel in skip:
                continue
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(root) / f, target)  # follows symlinks (HF cache snapshots)
            copied.append(rel)
    return copied


def pad_checkpoint(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, tp_sizes: Iterable[int], *,
                   target: int | None = None, overwrite: bool = False,
                   progress: Callable[[str], None] | None = _stderr,
                   progress_bar: bool | None = False) -> PadReport:
    """Write a copy of ``src_dir`` to ``dst_dir`` whose MLP intermediate size every TP in
    ``tp_sizes`` accepts (AWQ + AWQ-Marlin rules). Nothing is written when no padding is needed
    (``report.changed`` is False). Raises :class:`UnsupportedCheckpoint` for layouts it does not handle.

    ``progress`` gets one line per step and shard; ``progress_bar`` adds a bytes bar on stderr that
    advances within shards and names the shard and tensor being written (None: :func:`want_progress_bar`).
    """
    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    p = plan(src_dir, tp_sizes, target=target)
    src = p.src
    dst = Path(dst_dir).expanduser()
    report = PadReport(str(src), str(dst), p.old_size, p.new_size, p.tp_sizes)
    tps = " ".join(map(str, p.tp_sizes))
    if not p.changed:
        say(f"{src}: intermediate_size {p.old_size} already works at TP {tps} (group {p.group_size}); nothing to do")
        report.dst = None
        return report
    rs, rd = src.resolve(), dst.resolve()
    if rs == rd or rs in rd.parents or rd in rs.parents:
        raise ValueError(f"destination {dst} must be outside the source {src} (and vice versa)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty (pass --overwrite to replace it)")
    total = sum(os.path.getsize(src / f) for f in p.files)
    dst.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dst.parent).free
    grow = sum(_nbytes(tp.dtype, tp.new_shape) - _nbytes(tp.dtype, tp.shape)
               for d in p.pads.values() for tp in d.values())
    if free < total + grow + (64 << 20):
        raise OSError(f"not enough free disk at {dst.parent}: need ~{(total + grow) / 2**30:.1f} GiB, "
                      f"have {free / 2**30:.1f} GiB")

    for tp in p.tp_sizes:  # Marlin-only (non-fatal) attention problems survive padding: say so up front
        for lin in decoder_linears(p.shapes):
            if not lin.name.startswith("mlp."):
                for prob in _violations(lin, p.shapes, tp, p.quant):
                    say(f"note: padding does not change this (vLLM still loads, on a slower kernel): {prob.message}")
    say(f"pad {src} -> {dst}: intermediate_size {p.old_size} -> {p.new_size} (TP {tps}, group {p.group_size}); "
        f"{p.num_padded_tensors} tensors in {len(p.pads)}/{len(p.files)} shard(s), {total / 2**30:.2f} GiB")
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    bar_total = sum(_data_bytes(p.headers[f][0], p.pads[f]) if f in p.pads else os.path.getsize(src / f)
                    for f in p.files)
    bar = _progress_bar(bar_total, want_progress_bar(total) if progress_bar is None else progress_bar)
    if progress is _stderr and not isinstance(bar, _NoBar):
        from tqdm import tqdm

        say = lambda m: tqdm.write(m, file=sys.stderr)  # noqa: E731 - above the bar, not through it
    try:
        sizes: dict[str, int] = {}
        for k, fname in enumerate(p.files, 1):
            t1 = time.monotonic()
            out = tmp / fname
            out.parent.mkdir(parents=True, exist_ok=True)
            header, start = p.headers[fname]
            pads = p.pads.get(fname, {})
            bar.set_description_str(f"[{k}/{len(p.files)}] {fname}", refresh=False)
            if pads:
                rewrite_shard(src / fname, out, header, start, pads,
                              bar=None if isinstance(bar, _NoBar) else bar)
                report.rewritten_files.append(fname)
                what = f"padded {len(pads)} tensor(s), copied {len(header) - len(pads) - ('__metadata__' in header)}"
            else:
                bar.set_postfix_str("verbatim", refresh=False)
                _copy_file(src / fname, out, bar)
                report.copied_files.append(fname)
                what = "copied verbatim (no MLP tensors)"
            new_header, _ = read_safetensors_header(out)  # read back: a valid header with the new shapes
            sizes[fname] = sum(_nbytes(v["dtype"], v["shape"]) for n, v in new_header.items() if n != "__metadata__")
            say(f"[{k}/{len(p.files)}] {fname}: {what} ({os.path.getsize(out) / 2**20:.1f} MiB, "
                f"{time.monotonic() - t1:.1f}s)")
        report.padded_tensors = p.num_padded_tensors
        bar.close()

        # index: same weight_map (names and files do not change), recomputed total_size
        if (src / INDEX_FILE).is_file():
            index = read_json(src / INDEX_FILE)
            index.setdefault("metadata", {})
            index["metadata"]["total_size"] = sum(sizes.values())
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

        cfg = load_config(src)
        new_cfg = copy.deepcopy(cfg)
        report.config_keys = _update_config(new_cfg, p.old_size, p.new_size)
        (tmp / CONFIG_FILE).write_text(json.dumps(new_cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        say(f"config.json: {', '.join(report.config_keys)} = {p.new_size}")

        skip = set(p.files) | {INDEX_FILE, CONFIG_FILE}
        report.copied_files += _copy_tree_except(src, tmp, skip)

        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(tmp, dst)
    except BaseException:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.seconds = time.monotonic() - t0
    say(f"done in {report.seconds:.1f}s: {dst} (intermediate_size {p.new_size}); check it with:\n"
        f"  python -m serve_app.awq check {dst} --tp {tps}")
    return report
