"""Decode speed against the physical limit.

At batch 1 every decode step must stream all weights a token passes through (each decoder layer,
the final norm, lm_head; not the vision tower, one row of the embedding) from device memory, so

    TPOT_min = decode_bytes / B        tokens/s_max = B / decode_bytes

with B the device's achievable copy bandwidth, measured here as ``dst.copy_(src)`` of a large
buffer (bytes read + bytes written per second, as stream-style benchmarks count it). The KV cache a
short-context step reads is ignored (a few MB at 600 tokens), so the bound is slightly optimistic.
``decode_bytes`` comes from the checkpoint's safetensors headers.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "F64": 8, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "U32": 4, "U64": 8}


def safetensors_tensors(model_dir: str | Path) -> dict[str, int]:
    """name -> bytes, from the headers of every *.safetensors file in ``model_dir``."""
    out: dict[str, int] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            out[name] = e - b
    return out


def decode_bytes(model_dir: str | Path) -> dict[str, int]:
    t = safetensors_tensors(model_dir)
    total = sum(t.values())
    vision = sum(v for k, v in t.items() if k.startswith(("visual.", "model.visual.")))
    embed = sum(v for k, v in t.items() if k.endswith("embed_tokens.weight"))
    return {"total_bytes": total, "vision_bytes": vision, "embed_bytes": embed,
            "decode_bytes": total - vision - embed}


def measure_copy_bandwidth(device: str = "cuda", size_mib: int = 2048, iters: int = 20) -> dict[str, Any]:
    """Best and median of ``iters`` device-to-device copies of ``size_mib`` MiB (GB/s, 1e9 bytes)."""
    import torch

    n = size_mib * (1 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    src.fill_(1)
    dst = torch.empty_like(src)
    times = []
    for i in range(iters + 2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            dt = a.elapsed_time(b) / 1000.0
        else:
            t = time.perf_counter()
            dst.copy_(src)
            dt = time.perf_counter() - t
        if i >= 2:  # first two: warm-up
            times.append(dt)
    times.sort()
    moved = 2 * n  # read + write
    info: dict[str, Any] = {
        "device": device,
        "buffer_mib": size_mib,
        "iters": iters,
        "copy_gbps_best": round(moved / times[0] / 1e9, 1),
        "copy_gbps_median": round(moved / times[len(times) // 2] / 1e9, 1),
    }
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(0)
    info["torch"] = torch.__version__
    return info


def decode_bound(decode_bytes_: int, gbps: float) -> dict[str, float]:
    bps = gbps * 1e9
    return {"bound_tpot_ms": round(decode_bytes_ / bps * 1000.0, 3), "bound_tok_per_s": round(bps / decode_bytes_, 1)}
