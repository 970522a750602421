"""Video bytes -> sampled, resized RGB frames, with qwen-vl-utils 0.0.14 sampling semantics.

Metadata (frame count, fps) follows torchcodec's exact mode, qwen-vl-utils' preferred backend:
the stream is demuxed once (no decoding) to list its packets; frame ``i`` is the i-th packet in
presentation (pts) order and ``average_fps = num_frames / (end - begin)`` over the stream's pts
span. Sampling: ``calculate_video_frame_range`` -> ``smart_nframes`` -> ``linspace(start, end,
n).round()``. Per-frame size: ``smart_resize`` with ``max_pixels = max(min(VIDEO_MAX_PIXELS,
total_pixels / n * 2), int(min_pixels * 1.05))`` capped by a caller's max_pixels, resized with
torchvision's antialiased bicubic as qwen-vl-utils does (in fast mode, when shrinking >= 1.4x,
torch's uint8 version of it: mean |delta| 0.16, see resize.py). Each sampled frame is converted and
resized as soon as it is decoded, so memory holds the output plus one full-size frame.

Only real video containers are demuxed (``FORMAT_WHITELIST``) and FFmpeg may open nothing else
(``protocol_whitelist``): no playlists, concat lists or image pipes, no URLs, no local paths.

Decoding only what is needed (PyAV/FFmpeg; decord and torchcodec decode every frame up to the last
sample, see bench/README.md): packets kept from the demux pass are fed to the decoder directly.
* A sampled frame needs decoding from the keyframe that starts its GOP (from the previous one for a
  leading picture of an open GOP); GOPs with no sampled frame and the tail after a GOP's last
  sampled frame are never sent to the decoder (a seek, without the container's seek inexactness).
* Packets of frames that are not sampled are sent with ``skip_frame = NONREF``: the decoder drops
  them if no other frame references them (non-reference B-frames; about half the frames of a
  default x264 encode) and decodes them otherwise, so sampled frames are bit-identical to a full
  decode (tested against one).
* Only sampled frames are converted to RGB and resized.
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
from .resize import resize_torchvision, resize_video_frame


@dataclass
class VideoLimits:
    max_frame_pixels: int = 8192 * 4352
    max_source_frames: int = 200_000
    max_duration_s: float = 3600.0
    max_sampled_frames: int = vm.FPS_MAX_FRAMES
    # Source pixels the decoder must produce to reach the sampled frames (frames to decode x frame size),
    # bounded before any decode: a 23 KB GIF of many large delta frames otherwise costs minutes of CPU.
    max_decode_pixels: float = 2e10


def frames_to_decode(idx: "StreamIndex", indices: list[int]) -> int:
    """An upper bound on the frames decoded to produce ``indices`` (no decoding: from the index)."""
    if not indices:
        return 0
    if not idx.exact_pts:
        return max(indices) + 1  # sequential decode up to the last wanted frame
    ranges = decode_ranges(idx, {idx.pts_sorted[i] for i in set(indices)})
    return sum(b - a + 1 for a, b in ranges)


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
    packets: list  # av.Packet in decode order (frame data kept for the decode pass)
    pkt_pts: list[int]  # per packet, decode order
    pkt_key: list[bool]
    pts_sorted: list[int]  # frame i's pts
    time_base: Fraction
    average_fps: float
    duration_s: float
    codec: str = ""
    exact_pts: bool = True  # False: pts missing/duplicated, frames are counted in output order
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.pts_sorted)


def _av():
    import av  # imported lazily: only video needs it
    return av


def _fferr(e: Exception) -> str:
    s = getattr(e, "strerror", None) or str(e)
    return str(s).split(": '<")[0][:200]


# Demuxers allowed to parse untrusted bytes: real video containers only. No playlists (hls, dash),
# concat/image2/pipe demuxers or raw streams; and no nested opens at all (protocol_whitelist names
# no real protocol), so a file can never make FFmpeg open a URL or a local path.
FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,gif,ogg,asf,ivf"
CONTAINER_OPTIONS = {"format_whitelist": FORMAT_WHITELIST, "protocol_whitelist": "none"}


def _open_kwargs(av) -> dict:
    # PyAV < 19 decodes container metadata strictly unless told to ignore bad bytes; PyAV 19 dropped
    # the argument (and the strict decoding with it).
    major = int(str(getattr(av, "__version__", "0")).split(".")[0] or 0)
    return {"metadata_errors": "ignore"} if major < 19 else {}


def open_container(data: bytes):
    av = _av()
    if not data:
        raise MediaError("video data is empty (0 bytes)")
    try:
        return av.open(io.BytesIO(data), mode="r", container_options=CONTAINER_OPTIONS, **_open_kwargs(av))
    except (av.error.FFmpegError, ValueError, OSError, EOFError, UnicodeDecodeError) as e:
        raise MediaError(f"cannot read video: not a supported container, corrupt or truncated ({_fferr(e)})") from None


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
    if stream.duration and float(stream.duration * tb) > max_d * 1.01:
        raise MediaTooLarge(f"video is {float(stream.duration * tb):.1f}s long, more than the limit of {max_d:g}s")
    packets, pts, keys = [], [], []
    exact = True
    end = None
    try:
        for pkt in container.demux(stream):
            if pkt.size == 0:
                continue
            p = pkt.pts if pkt.pts is not None else pkt.dts
            if p is None:
                exact = False
                p = len(pts)
            packets.append(pkt)
            pts.append(p)
            keys.append(bool(pkt.is_keyframe))
            e = p + (pkt.duration or 0)
            end = e if end is None or e > end else end
            if len(pts) > limits.max_source_frames:
                raise MediaTooLarge(f"video has more than {limits.max_source_frames} frames")
    except av.error.FFmpegError as e:
        if not pts:
            raise MediaError(f"cannot read video: corrupt or truncated ({_fferr(e)})") from None
    if not pts:
        raise MediaError("video stream has no frames")
    pts_sorted = sorted(pts)
    if len(set(pts_sorted)) != len(pts_sorted):
        exact = False
    begin = pts_sorted[0]
    span = float((end - begin) * tb) if (exact and end is not None) else 0.0
    rate = stream.average_rate or stream.guessed_rate
    if span > 0:
        fps = len(pts) / span
    elif rate:
        fps = float(rate)
    else:
        raise MediaError("cannot determine the video frame rate")
    duration = len(pts) / fps
    if duration > max_d * 1.01:
        raise MediaTooLarge(f"video is {duration:.1f}s long, more than the limit of {max_d:g}s")
    return StreamIndex(w, h, packets, pts, keys, pts_sorted, tb, fps, duration, codec=cc.name, exact_pts=exact)


def plan_sampling(idx: StreamIndex, options: Mapping[str, Any], d: VideoDefaults) -> tuple[list[int], float, int]:
    """(frame indices, sample_fps, frames in range) as qwen-vl-utils' torchcodec reader computes them."""
    total = idx.num_frames
    if total == 1:
        # qwen-vl-utils raises here (nframes would be 0); we use the one frame twice (T must be even).
        return [0, 0], float(options.get("fps", d.fps)), 1
    start, end, count = vm.calculate_video_frame_range(options, total, idx.average_fps)
    n = vm.smart_nframes(options, count, idx.average_fps, default_fps=d.fps,
                         default_min_frames=d.min_frames, default_max_frames=d.max_frames)
    indices = vm.sample_frame_indices(total, n, start, end)
    sample_fps = n / max(count, 1e-6) * idx.average_fps
    return indices, sample_fps, count


def decode_ranges(idx: StreamIndex, wanted_pts: set[int]) -> list[tuple[int, int]]:
    """Packet ranges [a, b] (decode order, inclusive) that must be decoded to produce ``wanted_pts``."""
    key_pos = [i for i, k in enumerate(idx.pkt_key) if k] or [0]
    if key_pos[0] != 0:
        key_pos.insert(0, 0)
    spans: list[tuple[int, int]] = []
    kp = 0
    for p, pts in enumerate(idx.pkt_pts):
        while kp + 1 < len(key_pos) and key_pos[kp + 1] <= p:
            kp += 1
        if pts not in wanted_pts:
            continue
        start_k = kp
        # leading picture of an open GOP (shown before its keyframe): needs the previous GOP too
        if start_k > 0 and pts < idx.pkt_pts[key_pos[start_k]]:
            start_k -= 1
        spans.append((key_pos[start_k], p))
    ranges: list[list[int]] = []
    for a, b in sorted(spans):
        if ranges and a <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], b)
        else:
            ranges.append([a, b])
    return [(a, b) for a, b in ranges]


def decode_selected(data: bytes, idx: StreamIndex, indices: list[int], *, threads: int = 1,
                    stats: dict | None = None, on_frame=None) -> tuple[dict[int, Any], int]:
    """{frame index: av.VideoFrame} for ``indices``, decoding as little as possible; also #packets sent.

    With ``on_frame(i, frame)`` each wanted frame is handed over as it is decoded and not kept (the
    returned dict then stays empty): 768 sampled 8K frames would otherwise be ~38 GB of YUV.
    ``stats`` (optional) receives packets_sent and frames_decoded (frames the decoder produced)."""
    av = _av()
    want = {idx.pts_sorted[i]: i for i in set(indices)}
    container = open_container(data)  # a fresh decoder context (the demux pass read to the end)
    try:
        stream = container.streams.video[0]
        cc = stream.codec_context
        cc.thread_count = max(1, threads)
        cc.thread_type = "SLICE" if threads > 1 else "NONE"
        out: dict[int, Any] = {}
        seen: set[int] = set()
        sent = 0
        produced = [0]

        def take(frames):
            produced[0] += len(frames)
            for fr in frames:
                i = want.get(fr.pts)
                if i is not None and i not in seen:
                    seen.add(i)
                    if on_frame is None:
                        out[i] = fr
                    else:
                        on_frame(i, fr)

        errors = 0
        for n, (a, b) in enumerate(decode_ranges(idx, set(want))):
            if n:
                cc.flush_buffers()
            for p in range(a, b + 1):
                cc.skip_frame = "DEFAULT" if idx.pkt_pts[p] in want else "NONREF"
                sent += 1
                try:
                    take(cc.decode(idx.packets[p]))
                except av.error.FFmpegError:
                    errors += 1  # a damaged packet: keep going, like ffmpeg does
                    if errors > 50:
                        raise
            cc.skip_frame = "DEFAULT"
            try:
                take(cc.decode(None))  # drain frames held back for reordering
            except av.error.FFmpegError:
                errors += 1
        if stats is not None:
            stats.update(packets_sent=sent, frames_decoded=produced[0], ranges=n + 1 if idx.pkt_pts else 0)
        return out, sent
    finally:
        container.close()


def decode_sequential(data: bytes, indices: list[int], on_frame=None) -> dict[int, Any]:
    """Fallback when pts cannot identify frames: decode everything, count frames in output order."""
    av = _av()
    want = set(indices)
    last = max(want)
    out: dict[int, Any] = {}
    container = open_container(data)
    try:
        stream = container.streams.video[0]
        n = 0
        try:
            for frame in container.decode(stream):
                if n in want:
                    if on_frame is None:
                        out[n] = frame
                    else:
                        on_frame(n, frame)
                n += 1
                if n > last:
                    break
        except av.error.FFmpegError:
            pass
    finally:
        container.close()
    return out


@dataclass
class VideoPlan:
    """What a video will become, known from the container index alone (no frame decoded)."""
    index: StreamIndex
    indices: list[int]  # source frames to sample (even count)
    sample_fps: float
    count: int  # frames in the sampled range
    height: int  # per-frame output size
    width: int

    @property
    def tokens(self) -> int:
        return vm.video_tokens(len(self.indices), self.height, self.width)


def plan_video(data: bytes, options: Mapping[str, Any], *, limits: VideoLimits | None = None,
               defaults: VideoDefaults | None = None) -> VideoPlan:
    """Demux (no decoding), sample as qwen-vl-utils does, and check every limit that the index can
    tell: frame size, duration, frame counts, decode work."""
    d = defaults or VideoDefaults()
    limits = limits or VideoLimits()
    av = _av()
    container = open_container(data)
    try:
        try:
            idx = index_stream(container, limits)
        except av.error.FFmpegError as e:
            raise MediaError(f"cannot read video: corrupt or truncated ({_fferr(e)})") from None
    finally:
        container.close()
    indices, sample_fps, count = plan_sampling(idx, options, d)
    if len(indices) > limits.max_sampled_frames:
        raise MediaTooLarge(f"{len(indices)} frames would be sampled, more than the limit of "
                            f"{limits.max_sampled_frames}")
    work = frames_to_decode(idx, indices) * idx.width * idx.height
    if work > limits.max_decode_pixels:
        raise MediaTooLarge(f"sampling this video means decoding {work:.3g} source pixels, more than the limit of "
                            f"{limits.max_decode_pixels:.3g} (media.max_video_decode_pixels); send a shorter or "
                            f"smaller clip, or fewer frames")
    th, tw = vm.video_target_size(idx.height, idx.width, len(indices), options, min_pixels=d.min_pixels,
                                  max_pixels=d.max_pixels, total_pixels=d.total_pixels)
    return VideoPlan(idx, indices, sample_fps, count, th, tw)


def decode_video(data: bytes, options: Mapping[str, Any], *, limits: VideoLimits | None = None,
                 defaults: VideoDefaults | None = None, mode: str = "fast") -> tuple[np.ndarray, dict[str, Any]]:
    """-> (frames uint8 [T, H, W, 3], metadata)."""
    return decode_planned(data, plan_video(data, options, limits=limits, defaults=defaults), mode=mode)


def decode_planned(data: bytes, plan: VideoPlan, *, mode: str = "fast") -> tuple[np.ndarray, dict[str, Any]]:
    """The frames of a :class:`VideoPlan`, decoded from ``data`` (the bytes it was planned from)."""
    av = _av()
    idx, indices, sample_fps, count = plan.index, plan.indices, plan.sample_fps, plan.count
    th, tw = plan.height, plan.width
    out = np.empty((len(indices), th, tw, 3), dtype=np.uint8)
    positions: dict[int, list[int]] = {}
    for k, i in enumerate(indices):
        positions.setdefault(i, []).append(k)
    filled: list[int] = []

    def on_frame(i: int, frame) -> None:  # convert + resize as frames arrive; keep no full-size frame
        rgb = frame.to_ndarray(format="rgb24")
        if rgb.shape[:2] != (idx.height, idx.width):  # mid-stream size change: follow the header size
            rgb = resize_torchvision(rgb, (idx.width, idx.height))
        small = resize_video_frame(rgb, (tw, th), mode)
        for k in positions[i]:
            out[k] = small
        filled.append(i)

    try:
        if idx.exact_pts:
            decode_selected(data, idx, indices, on_frame=on_frame)
        else:
            decode_sequential(data, indices, on_frame=on_frame)
    except av.error.FFmpegError as e:
        raise MediaError(f"cannot decode video: corrupt or truncated ({_fferr(e)})") from None
    finally:
        idx.packets.clear()
    wanted = sorted(positions)
    if not filled:
        raise MediaError("cannot decode any frame of the video (corrupt or truncated)")
    if len(filled) * 2 < len(wanted):
        raise MediaError(f"video is corrupt or truncated: only {len(filled)} of {len(wanted)} sampled frames "
                         f"could be decoded")
    got = set(filled)
    for i in wanted:
        if i not in got:  # a damaged frame: use the nearest good one
            j = min(filled, key=lambda x: abs(x - i))
            for k in positions[i]:
                out[k] = out[positions[j][0]]
    one = idx.num_frames == 1
    meta = {
        # As qwen-vl-utils' video_metadata and transformers' VideoMetadata define them: fps is the
        # source's, so VideoMetadata.sampled_fps = len(frames_indices) / total_num_frames * fps is
        # the sampling fps (Qwen2.5-VL's second_per_grid_ts = 2 / sampled_fps).
        "fps": sample_fps if one else idx.average_fps,
        "frames_indices": list(indices),
        "total_num_frames": len(indices) if one else count,  # 1-frame clip: [0, 0] of "2" at sample fps
        "duration": idx.duration_s,
        "sample_fps": sample_fps,
        "video_backend": "pyav",
        "width": idx.width,
        "height": idx.height,
    }
    return out, meta
