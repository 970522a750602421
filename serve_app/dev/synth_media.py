"""Synthetic media for tests and benchmarks (deterministic; no files or network needed).

Photo-like content (smooth gradients, edges, texture and mild noise) so JPEG and H.264 behave as on
real pictures, not as on flat colour.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0, t: float = 0.0) -> np.ndarray:
    """uint8 [H, W, 3] photo-like picture; ``t`` shifts it (for video frames)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    p = rng.uniform(0.5, 3.0, size=6).astype(np.float32)
    r = 0.5 + 0.35 * np.sin(2 * np.pi * (p[0] * x + 0.3 * y + t * 0.2)) * np.cos(2 * np.pi * p[1] * y)
    g = 0.5 + 0.35 * np.sin(2 * np.pi * (p[2] * y - 0.2 * x) + t * 0.5)
    b = 0.5 + 0.30 * np.cos(2 * np.pi * (p[3] * x * y + p[4] * x + t * 0.1))
    img = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    # hard edges: a few rectangles and a disc
    for k in range(4):
        x0, y0 = rng.uniform(0, 0.8, 2)
        sx, sy = rng.uniform(0.05, 0.3, 2)
        x0 = (x0 + 0.05 * t * (k + 1)) % 0.9
        m = (x >= x0) & (x < x0 + sx) & (y >= y0) & (y < y0 + sy)
        img[m] = rng.uniform(0, 1, 3).astype(np.float32)
    cx, cy = 0.5 + 0.3 * np.cos(t), 0.5 + 0.3 * np.sin(t)
    m = (x - cx) ** 2 + ((y - cy) * height / width) ** 2 < 0.01
    img[m] = (0.9, 0.9, 0.2)
    # fine texture + sensor-like noise (downsampled noise keeps it cheap for big images)
    tex = rng.normal(0, 0.04, size=((height + 3) // 4, (width + 3) // 4, 1)).astype(np.float32)
    tex = np.repeat(np.repeat(tex, 4, 0), 4, 1)[:height, :width]
    img = img + tex
    out = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    noise = rng.integers(-3, 4, size=out.shape, dtype=np.int16)
    return np.clip(out.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def encode_image(arr_or_img, fmt: str = "JPEG", **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    bio = io.BytesIO()
    if fmt.upper() == "JPEG":
        kw.setdefault("quality", 90)
    img.save(bio, format=fmt, **kw)
    return bio.getvalue()


def jpeg(width: int, height: int, seed: int = 0, quality: int = 90, **kw) -> bytes:
    return encode_image(photo_like(width, height, seed), "JPEG", quality=quality, **kw)


def encode_video(frames, fps: float = 30, codec: str = "libx264", container: str = "mp4",
                 pix_fmt: str = "yuv420p", options: dict | None = None, audio: bool = False) -> bytes:
    """Encode an iterable of uint8 [H, W, 3] frames to bytes with PyAV."""
    import av

    bio = io.BytesIO()
    with av.open(bio, mode="w", format=container) as out:
        stream = None
        for arr in frames:
            if stream is None:
                stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = arr.shape[1], arr.shape[0]
                stream.pix_fmt = pix_fmt
                opts = {"preset": "ultrafast"} if codec == "libx264" else {}
                opts.update(options or {})
                stream.options = opts
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            for pkt in stream.encode(frame):
                out.mux(pkt)
        if stream is not None:
            for pkt in stream.encode():
                out.mux(pkt)
    return bio.getvalue()


def video(width: int, height: int, n_frames: int, fps: float = 30, seed: int = 0, **kw) -> bytes:
    base = photo_like(width, height, seed)
    frames = (np.roll(base, shift=(3 * i, 5 * i), axis=(0, 1)) for i in range(n_frames))
    return encode_video(frames, fps=fps, **kw)


def audio_only_mp4(seconds: float = 0.5, rate: int = 16000) -> bytes:
    import av

    bio = io.BytesIO()
    with av.open(bio, mode="w", format="mp4") as out:
        s = out.add_stream("aac", rate=rate)
        n = int(seconds * rate)
        t = np.arange(n, dtype=np.float32) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        step = 1024
        for i in range(0, n, step):
            fr = av.AudioFrame.from_ndarray(samples[:, i:i + step].copy(), format="fltp", layout="mono")
            fr.sample_rate = rate
            for pkt in s.encode(fr):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return bio.getvalue()
