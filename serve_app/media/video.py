"""Video bytes -> sampled, resized RGB frames, with qwen-vl-utils 0.0.14 sampling semantics.

Frame count and fps follow torchcodec's "exact" metadata (qwen-vl-utils' preferred backend):
the stream is demuxed once (no decoding) to count frames and find the stream's time span;
``average_fps = num_frames / (end - begin)``. Frame ``i`` is the i-th frame in presentation order.
Sampling: ``calculate_video_frame_range`` -> ``smart_nframes`` -> ``linspace(start, end, n).round()``.
Per-frame size: ``smart_resize`` with ``max_pixels = max(min(VIDEO_MAX_PIXELS, total_pixels/n*2),
int(min_pixels*1.05))`` (capped by a caller's max_pixels), resized with an antialiased bicubic
filter (qwen-vl-utils uses torchvision's, which is Pillow's algorithm).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from . import vision_math as vm
from .errors import MediaError, MediaTooLarge
from .resize import resize_rgb


@dataclass
class VideoLimits:
    max_frame_pixels: int
    max_source_frames: int
    max_duration_s: float
    max_sampled_frames: int


@dataclass
class VideoDefaults:
    fps: float = vm.FPS
    min_frames: int = vm.FPS_MIN_FRAMES
    max_frames: int = vm.FPS_MAX_FRAMES
    min_pixels: int = vm.VIDEO_MIN_PIXELS
    max_pixels: int = vm.VIDEO_MAX_PIXELS
    total_pixels: float = vm.VIDEO_TOTAL_PIXELS


@dataclass
class StreamIndex:
    """What demuxing (no decoding) tells about the video stream."""
    width: int
    height: int
    pts: list[int]  # presentation timestamps in time_base units, sorted = frame i's pts
    keyframe_pts: list[int]  # sorted
    time_base: Fraction
    average_fps: float
    duration_s: float
    codec: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.pts)


def _av():
    import av  # imported lazily: only video needs it
    return av


def open_container(data: bytes):
    av = _av()
    if not data:
        raise MediaError("video data is empty (0 bytes)")
    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError, EOFError) as e:
        raise MediaError(f"cannot read video: not a supported container, corrupt or truncated ({_fferr(e)})") from None


def _fferr(e: Exception) -> str:
    s = getattr(e, "strerror", None) or str(e)
    return s.split(": '<")[0][:200]


def index_stream(container, limits: VideoLimits) -> StreamIndex:
    av = _av()
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        raise MediaError(f"file has no video stream (streams: {', '.join(kinds) or 'none'})")
    stream = container.streams.video[0]
    cc = stream.codec_context
    w, h = int(cc.width or 0), int(cc.height or 0)
    if w <= 0 or h <= 0:
        raise MediaError(f"video stream has an invalid frame size {w}x{h}")
    if w * h > limits.max_frame_pixels:
        raise MediaTooLarge(f"video frames are {w}x{h} = {w * h} pixels, more than the limit of "
                            f"{limits.max_frame_pixels}")
    tb = stream.time_base or Fraction(1, 90000)
    max_d = limits.max_duration_s
    if stream.duration and stream.duration * tb > max_d * 1.01:
        raise MediaTooLarge(f"video is {float(stream.duration * tb):.1f}s long, more than the limit of {max_d:g}s")
    pts: list[int] = []
    keys: list[int] = []
    end = None
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                if pkt.size and pkt.dts is not None:  # no pts: fall back to dts
                    p = pkt.dts
                else:
                    continue
            else:
                p = pkt.pts
            pts.append(p)
            if pkt.is_keyframe:
                keys.append(p)
            e = p + (pkt.duration or 0)
            end = e if end is None or e > end else end
            if len(pts) > limits.max_source_frames:
                raise MediaTooLarge(f"video has more than {limits.max_source_frames} frames")
    except av.error.FFmpegError as e:
        if not pts:
            raise MediaError(f"cannot read video: corrupt or truncated ({_fferr(e)})") from None
    if not pts:
        raise MediaError("video stream has no frames")
    pts.sort()
    keys.sort()
    begin = pts[0]
    span = (end - begin) if end is not None else 0
    rate = stream.average_rate or stream.guessed_rate
    if span > 0 and len(pts) > 1 or (span > 0 and not rate):
        fps = len(pts) / float(span * tb)
    elif rate:
        fps = float(rate)
    else:
        raise MediaError("cannot determine the video frame rate")
    duration = len(pts) / fps
    if duration > max_d * 1.01:
        raise MediaTooLarge(f"video is {duration:.1f}s long, more than the limit of {max_d:g}s")
    return StreamIndex(w, h, pts, keys, tb, fps, duration, codec=cc.name)


def plan_sampling(idx: StreamIndex, options: Mapping[str, Any], d: VideoDefaults) -> tuple[list[int], float, int]:
    """(frame indices, sample_fps, total frames in range) as qwen-vl-utils' torchcodec reader computes them."""
    total = idx.num_frames
    if total == 1:
        # qwen-vl-utils raises here (nframes would be 0); we use the frame twice (T must be even).
        return [0, 0], d.fps if "nframes" not in options else float(options.get("fps", d.fps)), 1
    start, end, count = vm.calculate_video_frame_range(options, total, idx.average_fps)
    n = vm.smart_nframes(options, count, idx.average_fps, default_fps=d.fps,
                         default_min_frames=d.min_frames, default_max_frames=d.max_frames)
    indices = vm.sample_frame_indices(total, n, start, end)
    sample_fps = n / max(count, 1e-6) * idx.average_fps
    return indices, sample_fps, count


def decode_frames(container, idx: StreamIndex, indices: list[int]) -> dict[int, "object"]:
    """Decode the frames at ``indices`` (presentation order); returns {index: av.VideoFrame}."""
    av = _av()
    want = set(indices)
    last = max(want)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    out: dict[int, object] = {}
    pts_to_index = {p: i for i, p in enumerate(idx.pts)}
    n_seen = 0
    try:
        for frame in container.decode(stream):
            i = pts_to_index.get(frame.pts, None) if frame.pts is not None else None
            if i is None:
                i = n_seen
            n_seen += 1
            if i in want:
                out[i] = frame
            if i >= last:
                break
    except av.error.FFmpegError as e:
        if not out:
            raise MediaError(f"cannot decode video: corrupt or truncated ({_fferr(e)})") from None
    return out


def decode_video(data: bytes, options: Mapping[str, Any], *, limits: VideoLimits,
                 defaults: VideoDefaults | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """-> (frames uint8 [T, H, W, 3], metadata)."""
    d = defaults or VideoDefaults()
    av = _av()
    container = open_container(data)
    try:
        try:
            idx = index_stream(container, limits)
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot read video: corrupt or truncated ({_fferr(e)})") from None
        indices, sample_fps, count = plan_sampling(idx, options, d)
        if len(indices) > limits.max_sampled_frames:
            raise MediaTooLarge(f"{len(indices)} frames would be sampled, more than the limit of "
                                f"{limits.max_sampled_frames}")
        th, tw = vm.video_target_size(idx.height, idx.width, len(indices), options, min_pixels=d.min_pixels,
                                      max_pixels=d.max_pixels, total_pixels=d.total_pixels)
        container.close()
        container = open_container(data)  # demuxing consumed it; reopening is cheaper than seeking back
        frames = decode_frames(container, idx, indices)
        missing = [i for i in indices if i not in frames]
        if missing:
            got = sorted(frames)
            if not got:
                raise MediaError("cannot decode any frame of the video (corrupt or truncated)")
            # truncated tail: use the nearest decoded frame, as a reader that stops early would fail;
            # we prefer a clear error when most frames are missing.
            if len(missing) > len(indices) // 2:
                raise MediaError(f"video is corrupt or truncated: only {len(got)} of {len(set(indices))} "
                                 f"sampled frames could be decoded")
        out = np.empty((len(indices), th, tw, 3), dtype=np.uint8)
        cache: dict[int, np.ndarray] = {}
        for k, i in enumerate(indices):
            if i not in cache:
                j = i if i in frames else min(frames, key=lambda x: abs(x - i))
                rgb = frames[j].to_ndarray(format="rgb24")
                cache[i] = resize_rgb(rgb, (tw, th))
            out[k] = cache[i]
    finally:
        container.close()
    meta = {
        "fps": sample_fps,
        "source_fps": idx.average_fps,
        "frames_indices": list(indices),
        "total_num_frames": count,
        "duration": idx.duration_s,
        "video_backend": "pyav",
        "width": idx.width,
        "height": idx.height,
    }
    return out, meta
