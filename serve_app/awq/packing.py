"""AutoAWQ "GEMM" packing of 4-bit weights, in numpy.

Layout (AutoAWQ ``WQLinear_GEMM``; what vLLM's ``awq`` / ``awq_marlin`` loaders read):

* ``qweight``  int32 ``[in_features, out_features // 8]``
* ``qzeros``   int32 ``[in_features // group, out_features // 8]``
* ``scales``   fp16  ``[in_features // group, out_features]``

Eight 4-bit values share one int32 along the *output* dimension.  Bit slot ``i`` (bits
``4*i .. 4*i+3``) of packed column ``j`` holds output column ``8*j + AWQ_PACK_ORDER[i]``
with ``AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)`` (AutoAWQ's ``order_map``); the inverse
permutation ``(0, 4, 1, 5, 2, 6, 3, 7)`` is vLLM's ``_REVERSE_AWQ_PACK_ORDER``.

Dequantization: ``W[k, n] = (q[k, n] - z[k // group, n]) * s[k // group, n]`` where ``W`` is the
transposed weight (``[in, out]``, i.e. ``y = x @ W``).

Nothing here needs torch; the tests check it against a literal port of AutoAWQ's loop.
"""

from __future__ import annotations

import numpy as np

W_BIT = 4
PACK_FACTOR = 32 // W_BIT  # 8 values per int32
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)
_SHIFTS = (np.arange(PACK_FACTOR, dtype=np.uint32) * W_BIT).astype(np.uint32)
_MAX_Q = (1 << W_BIT) - 1


def pack(values: np.ndarray) -> np.ndarray:
    """Pack unsigned 4-bit integers ``[rows, cols]`` (cols % 8 == 0) into AWQ int32 ``[rows, cols//8]``."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] % PACK_FACTOR:
        raise ValueError(f"pack: expected [rows, cols] with cols % {PACK_FACTOR} == 0, got {values.shape}")
    if values.size and (values.min() < 0 or values.max() > _MAX_Q):
        raise ValueError("pack: values must lie in [0, 15]")
    rows, cols = values.shape
    v = values.astype(np.uint32).reshape(rows, cols // PACK_FACTOR, PACK_FACTOR)
    v = v[:, :, list(AWQ_PACK_ORDER)]  # slot i <- column AWQ_PACK_ORDER[i]
    packed = np.bitwise_or.reduce(v << _SHIFTS, axis=-1).astype(np.uint32)
    return packed.view(np.int32)


def unpack(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack`: AWQ int32 ``[rows, n]`` -> uint8 ``[rows, 8*n]`` in column order."""
    packed = np.asarray(packed)
    if packed.dtype != np.int32 or packed.ndim != 2:
        raise ValueError(f"unpack: expected a 2-D int32 array, got {packed.dtype} {packed.shape}")
    p = packed.view(np.uint32)[:, :, None]
    slots = ((p >> _SHIFTS) & _MAX_Q).astype(np.uint8)  # [rows, n, 8] in slot order
    cols = slots[:, :, list(AWQ_REVERSE_ORDER)]  # column c lives in slot AWQ_REVERSE_ORDER[c]
    return cols.reshape(packed.shape[0], -1)


def dequantize(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """float64 ``[in, out]`` weight from AWQ GEMM tensors (``y = x @ W``)."""
    q = unpack(qweight).astype(np.float64)
    z = unpack(qzeros).astype(np.float64)
    s = np.asarray(scales).astype(np.float64)
    in_features, out_features = q.shape
    if group_size <= 0:
        group_size = in_features
    if z.shape != s.shape or s.shape != (in_features // group_size, out_features):
        raise ValueError(
            f"dequantize: shapes disagree: qweight {qweight.shape}, qzeros {qzeros.shape}, "
            f"scales {scales.shape}, group_size {group_size}"
        )
    g = np.arange(in_features) // group_size
    return (q - z[g]) * s[g]


def quantize(weight_in_out: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric round-to-nearest 4-bit quantization (AutoAWQ's ``pseudo_quantize_tensor``
    without the activation-aware scale search) of a ``[in, out]`` weight.

    Returns ``(qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales fp16 [in/g, out])``.
    Good enough to make realistic test checkpoints; no calibration data involved.
    """
    w = np.asarray(weight_in_out, dtype=np.float64)
    in_features, out_features = w.shape
    if group_size <= 0:
        group_size = in_features
    if in_features % group_size or out_features % PACK_FACTOR:
        raise ValueError(f"quantize: shape {w.shape} incompatible with group {group_size} / pack {PACK_FACTOR}")
    groups = in_features // group_size
    wg = w.reshape(groups, group_size, out_features)
    wmax = np.maximum(wg.max(axis=1), 0.0)
    wmin = np.minimum(wg.min(axis=1), 0.0)
    scales = np.maximum((wmax - wmin) / _MAX_Q, 1e-5).astype(np.float16)
    s64 = scales.astype(np.float64)
    zeros = np.clip(np.round(-wmin / s64), 0, _MAX_Q)
    q = np.clip(np.round(wg / s64[:, None, :]) + zeros[:, None, :], 0, _MAX_Q)
    q = q.reshape(in_features, out_features).astype(np.uint8)
    return pack(q), pack(zeros.astype(np.uint8)), scales
