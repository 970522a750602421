"""AWQ GEMM pack/unpack/dequantize against a literal reference (AutoAWQ's loop, vLLM's unpack)."""

import numpy as np
import pytest

from serve_app.awq import packing


def ref_pack(intweight: np.ndarray) -> np.ndarray:
    """AutoAWQ WQLinear_GEMM.from_linear, written out: slot i of packed column `col` holds
    column col*8 + order_map[i]."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    rows, cols = intweight.shape
    q = np.zeros((rows, cols // 8), dtype=np.uint32)
    for col in range(cols // 8):
        for i in range(8):
            q[:, col] |= intweight[:, col * 8 + order_map[i]].astype(np.uint32) << np.uint32(i * 4)
    return q.view(np.int32)


def ref_unpack(qweight: np.ndarray) -> np.ndarray:
    """vLLM auto_awq._convert_awq_to_standard_format, first half: shift, mask, reverse order."""
    reverse = [0, 4, 1, 5, 2, 6, 3, 7]
    rows, n = qweight.shape
    out = np.zeros((rows, n * 8), dtype=np.uint8)
    u = qweight.view(np.uint32)
    for col in range(n):
        slots = [(u[:, col] >> np.uint32(4 * i)) & np.uint32(0xF) for i in range(8)]
        for c in range(8):
            out[:, col * 8 + c] = slots[reverse[c]]
    return out


@pytest.mark.parametrize("shape", [(1, 8), (7, 16), (128, 64), (33, 40)])
def test_pack_matches_autoawq_loop_and_round_trips(shape):
    rng = np.random.default_rng(sum(shape))
    vals = rng.integers(0, 16, size=shape, dtype=np.uint8)
    packed = packing.pack(vals)
    assert packed.dtype == np.int32 and packed.shape == (shape[0], shape[1] // 8)
    np.testing.assert_array_equal(packed, ref_pack(vals))
    np.testing.assert_array_equal(packing.unpack(packed), vals)
    np.testing.assert_array_equal(ref_unpack(packed), vals)


def test_pack_order_bit_positions():
    # column c alone set to 0xF lands in bit slot AWQ_REVERSE_ORDER[c]
    for c in range(8):
        v = np.zeros((1, 8), np.uint8)
        v[0, c] = 0xF
        word = int(packing.pack(v).view(np.uint32)[0, 0])
        assert word == 0xF << (4 * packing.AWQ_REVERSE_ORDER[c])
    assert [packing.AWQ_PACK_ORDER[packing.AWQ_REVERSE_ORDER[c]] for c in range(8)] == list(range(8))


def test_zero_words_are_zero_values():
    assert not packing.unpack(np.zeros((2, 3), np.int32)).any()


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError):
        packing.pack(np.zeros((2, 7), np.uint8))
    with pytest.raises(ValueError):
        packing.pack(np.full((2, 8), 16))
    with pytest.raises(ValueError):
        packing.unpack(np.zeros((2, 3), np.int64))


def test_quantize_dequantize_matches_straightforward_reference():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, size=(256, 64))  # [in, out]
    qweight, qzeros, scales = packing.quantize(w, 128)
    assert qweight.shape == (256, 8) and qzeros.shape == (2, 8) and scales.shape == (2, 64)
    assert scales.dtype == np.float16
    deq = packing.dequantize(qweight, qzeros, scales, 128)
    q, z, s = packing.unpack(qweight), packing.unpack(qzeros), scales.astype(np.float64)
    ref = np.empty_like(deq)
    for k in range(256):
        for n in range(64):
            ref[k, n] = (int(q[k, n]) - int(z[k // 128, n])) * s[k // 128, n]
    np.testing.assert_array_equal(deq, ref)
    # round-to-nearest 4-bit: error at most half a step
    assert np.all(np.abs(deq - w) <= s.repeat(128, axis=0) * 0.5 + 1e-3)
