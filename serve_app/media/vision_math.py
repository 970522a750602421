"""Qwen2.5-VL resize and frame-sampling arithmetic, matching qwen-vl-utils 0.0.14.

Pure integer/float math, no I/O and no image libraries, so the API layer can predict token
counts (``smart_resize``) without decoding anything. Every function reproduces
``qwen_vl_utils/vision_process.py`` of qwen-vl-utils 0.0.14 (the version pinned in
requirements/cpu.lock), including its exact rounding: Python's ``round`` (half to even) in
``round_by_factor``, ``math.floor``/``math.ceil`` elsewhere, and ``torch.linspace(...).round()``
(also half to even) for frame indices.

Where qwen-vl-utils versions differ, 0.0.14 is followed:

* The per-frame video ``max_pixels`` given by the caller is *capped* by the computed limit
  ``max(min(VIDEO_MAX_PIXELS, total_pixels / n * 2), int(min_pixels * 1.05))`` (0.0.8-0.0.11 let a
  caller's ``max_pixels`` replace it).
* The default ``total_pixels`` is ``MODEL_SEQ_LEN * 28 * 28 * 0.9`` with MODEL_SEQ_LEN = 128000
  (older versions read ``VIDEO_MAX_PIXELS`` from the environment; we read neither).
* ``smart_resize`` adds the ``max(factor, ...)`` guard of the shrinking branch that transformers'
  Qwen2-VL image processor has and qwen-vl-utils (up to its latest release) lacks. It only changes
  results where qwen-vl-utils returns a 0 side and then crashes (31x639 under max_pixels 20*28^2:
  (0, 560) upstream, (28, 560) here and in transformers). We keep qwen-vl-utils' initial
  ``max(factor, round(...))`` guard, which transformers lacks (13x2600: qwen-vl-utils (28, 2604),
  transformers (28, 812)); our outputs are multiples of 28 within [min, max], which
  transformers' processor (inside vLLM) leaves unchanged.
* Frame ranges (``video_start``/``video_end``) use ``calculate_video_frame_range`` as the decord
  and torchcodec readers do; the torchvision reader (gone from torchvision >= 0.24, so unusable
  with the pinned torchvision 0.28) is not imitated.
* Frame lists: 0.0.14 resizes every listed frame with ``fetch_image(..., image_patch_size=28)``,
  i.e. with factor 56 (a quirk: it passes the 28-pixel merge factor where the 14-pixel patch
  size is expected), and then resizes the stacked frames again with the video rule at factor
  28. ``frame_list_sizes`` reproduces both steps so output sizes (and token counts) are
  identical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import MediaError

PATCH_SIZE = 14
SPATIAL_MERGE_SIZE = 2
IMAGE_FACTOR = PATCH_SIZE * SPATIAL_MERGE_SIZE  # 28
MAX_RATIO = 200

IMAGE_MIN_TOKEN_NUM = 4
IMAGE_MAX_TOKEN_NUM = 16384
VIDEO_MIN_TOKEN_NUM = 128
VIDEO_MAX_TOKEN_NUM = 768

MIN_PIXELS = IMAGE_MIN_TOKEN_NUM * IMAGE_FACTOR**2  # 3136
MAX_PIXELS = IMAGE_MAX_TOKEN_NUM * IMAGE_FACTOR**2  # 12845056
VIDEO_MIN_PIXELS = VIDEO_MIN_TOKEN_NUM * IMAGE_FACTOR**2  # 100352
VIDEO_MAX_PIXELS = VIDEO_MAX_TOKEN_NUM * IMAGE_FACTOR**2  # 602112
MODEL_SEQ_LEN = 128000
VIDEO_TOTAL_PIXELS = MODEL_SEQ_LEN * IMAGE_FACTOR * IMAGE_FACTOR * 0.9  # 90316800.0 (a float, as upstream)

FPS = 2.0
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768


def round_by_factor(number: float, factor: int) -> int:
    """Closest multiple of ``factor`` (Python ``round``: ties go to the even multiple)."""
    return round(number / factor) * factor


def ceil_by_factor(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def floor_by_factor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int | float | None = None,
    max_pixels: int | float | None = None,
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area in [min_pixels, max_pixels], aspect kept.

    Raises MediaError (a ValueError, as upstream raises) for an aspect ratio above 200, for
    ``max_pixels < min_pixels`` (an assertion upstream) and for non-positive sizes.
    """
    max_pixels = max_pixels if max_pixels is not None else IMAGE_MAX_TOKEN_NUM * factor**2
    min_pixels = min_pixels if min_pixels is not None else IMAGE_MIN_TOKEN_NUM * factor**2
    if height <= 0 or width <= 0:
        raise MediaError(f"invalid size {width}x{height}")
    if max_pixels < min_pixels:
        raise MediaError(f"max_pixels ({max_pixels}) must be greater than or equal to min_pixels ({min_pixels})")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise MediaError(
            f"absolute aspect ratio must be smaller than {MAX_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = max(factor, round_by_factor(height, factor))
    w_bar = max(factor, round_by_factor(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        # max(factor, ...): transformers' guard; qwen-vl-utils 0.0.14 has none and returns 0 here
        # for thin images under a small max_pixels (then fails in the resize).
        h_bar = max(factor, floor_by_factor(height / beta, factor))
        w_bar = max(factor, floor_by_factor(width / beta, factor))
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = ceil_by_factor(height * beta, factor)
        w_bar = ceil_by_factor(width * beta, factor)
    return h_bar, w_bar


def image_target_size(height: int, width: int, options: Mapping[str, Any], *,
                      min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                      factor: int = IMAGE_FACTOR) -> tuple[int, int]:
    """``fetch_image``'s size rule: resized_height/width if both given, else min/max_pixels."""
    if "resized_height" in options and "resized_width" in options:
        return smart_resize(options["resized_height"], options["resized_width"], factor=factor)
    return smart_resize(
        height, width, factor=factor,
        min_pixels=options.get("min_pixels", min_pixels),
        max_pixels=options.get("max_pixels", max_pixels),
    )


def smart_nframes(options: Mapping[str, Any], total_frames: int, video_fps: float, *,
                  default_fps: float = FPS, default_min_frames: int = FPS_MIN_FRAMES,
                  default_max_frames: int = FPS_MAX_FRAMES) -> int:
    """Number of frames to sample (even, in [2, total_frames]); ``fps`` xor ``nframes``."""
    if "fps" in options and "nframes" in options:
        raise MediaError("only one of `fps` and `nframes` may be given")
    if "nframes" in options:
        nframes = round_by_factor(options["nframes"], FRAME_FACTOR)
    else:
        fps = options.get("fps", default_fps)
        min_frames = ceil_by_factor(options.get("min_frames", default_min_frames), FRAME_FACTOR)
        max_frames = floor_by_factor(options.get("max_frames", min(default_max_frames, total_frames)), FRAME_FACTOR)
        nframes = total_frames / video_fps * fps
        nframes = min(min(max(nframes, min_frames), max_frames), total_frames)
        nframes = floor_by_factor(nframes, FRAME_FACTOR)
    if not (FRAME_FACTOR <= nframes <= total_frames):
        raise MediaError(f"nframes should be in interval [{FRAME_FACTOR}, {total_frames}], but got {nframes}")
    return int(nframes)


def _round_half_even(x: float) -> int:
    return int(round(x))


def sample_frame_indices(total: int, n: int, start: int = 0, end: int | None = None) -> list[int]:
    """``torch.linspace(start, end, n).round()`` (end defaults to total - 1), without torch.

    torch.linspace computes in float32: step = (end - start) / (n - 1), and for i < n/2 the value
    start + i*step, otherwise end - (n - 1 - i)*step. We reproduce that in float32 via numpy so
    that ties (x.5) round exactly as torch does (half to even).
    """
    import numpy as np

    if end is None:
        end = total - 1
    if n <= 0:
        return []
    if n == 1:
        return [_round_half_even(float(np.float32(start)))]
    s, e = np.float32(start), np.float32(end)
    step = np.float32((e - s) / np.float32(n - 1))
    i = np.arange(n)
    half = n // 2
    lo = s + i[:half].astype(np.float32) * step
    hi = e - (np.float32(n - 1) - i[half:].astype(np.float32)) * step
    vals = np.concatenate([lo, hi]).astype(np.float32)
    return [int(v) for v in np.rint(vals)]


def calculate_video_frame_range(options: Mapping[str, Any], total_frames: int, video_fps: float) -> tuple[int, int, int]:
    """(start_frame, end_frame, count) for video_start/video_end in seconds, as upstream."""
    if video_fps <= 0:
        raise MediaError("video fps must be a positive number")
    if total_frames <= 0:
        raise MediaError("video has no frames")
    video_start = options.get("video_start")
    video_end = options.get("video_end")
    if video_start is None and video_end is None:
        return 0, total_frames - 1, total_frames
    max_duration = total_frames / video_fps
    if video_start is not None:
        start_clamped = max(0.0, min(video_start, max_duration))
        start_frame = math.ceil(start_clamped * video_fps)
    else:
        start_clamped = 0.0
        start_frame = 0
    if video_end is not None:
        end_clamped = max(0.0, min(video_end, max_duration))
        end_frame = min(math.floor(end_clamped * video_fps), total_frames - 1)
    else:
        end_clamped = max_duration
        end_frame = total_frames - 1
    if start_frame >= end_frame:
        raise MediaError(
            f"invalid time range: start frame {start_frame} (at {start_clamped}s) is not before end frame "
            f"{end_frame} (at {end_clamped}s); video duration {max_duration:.2f}s "
            f"({total_frames} frames @ {video_fps:g} fps)"
        )
    return start_frame, end_frame, end_frame - start_frame + 1


def video_frame_max_pixels(nframes: int, options: Mapping[str, Any], *,
                           min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
                           total_pixels: float = VIDEO_TOTAL_PIXELS) -> tuple[int | float, int | float]:
    """(min_pixels, max_pixels) per frame for ``nframes`` frames, as ``fetch_video`` computes them.

    max = max(min(VIDEO_MAX_PIXELS, total_pixels / n * 2), int(min_pixels * 1.05)), then capped
    by a caller's ``max_pixels``.
    """
    min_px = options.get("min_pixels", min_pixels)
    total = options.get("total_pixels", total_pixels)
    limit = max(min(max_pixels, total / nframes * FRAME_FACTOR), int(min_px * 1.05))
    return min_px, min(options.get("max_pixels", limit), limit)


def video_target_size(height: int, width: int, nframes: int, options: Mapping[str, Any], *,
                      min_pixels: int = VIDEO_MIN_PIXELS, max_pixels: int = VIDEO_MAX_PIXELS,
                      total_pixels: float = VIDEO_TOTAL_PIXELS, factor: int = IMAGE_FACTOR) -> tuple[int, int]:
    """Per-frame output size of a video of ``nframes`` frames of ``height`` x ``width``."""
    if "resized_height" in options and "resized_width" in options:
        return smart_resize(options["resized_height"], options["resized_width"], factor=factor)
    min_px, max_px = video_frame_max_pixels(nframes, options, min_pixels=min_pixels,
                                            max_pixels=max_pixels, total_pixels=total_pixels)
    return smart_resize(height, width, factor=factor, min_pixels=min_px, max_pixels=max_px)


def frame_list_sizes(height: int, width: int, nframes_padded: int, options: Mapping[str, Any], *,
                     video_min_pixels: int = VIDEO_MIN_PIXELS, video_max_pixels: int = VIDEO_MAX_PIXELS,
                     total_pixels: float = VIDEO_TOTAL_PIXELS) -> tuple[tuple[int, int], tuple[int, int]]:
    """((h1, w1), (h2, w2)) for a frame list: per-frame image step (factor 56), then video step.

    Step 1 is ``fetch_image`` with image_patch_size=28 (factor 56, image token limits at that
    factor, the element's min/max_pixels and resized_* passed through); step 2 is the video rule
    at factor 28 on the step-1 size and the padded frame count.
    """
    f1 = IMAGE_FACTOR * SPATIAL_MERGE_SIZE  # 56, see module docstring
    step1 = image_target_size(height, width, options, factor=f1,
                              min_pixels=IMAGE_MIN_TOKEN_NUM * f1**2, max_pixels=IMAGE_MAX_TOKEN_NUM * f1**2)
    step2 = video_target_size(step1[0], step1[1], nframes_padded, options, min_pixels=video_min_pixels,
                              max_pixels=video_max_pixels, total_pixels=total_pixels)
    return step1, step2


def image_tokens(height: int, width: int) -> int:
    """Visual tokens of an image resized to ``height`` x ``width`` (multiples of 28): one per 2x2
    merge of 14-pixel patches, as Qwen2.5-VL's processor counts them (``image_grid_thw.prod() // 4``)."""
    return (height // IMAGE_FACTOR) * (width // IMAGE_FACTOR)


def video_tokens(nframes: int, height: int, width: int) -> int:
    """Visual tokens of ``nframes`` frames (even) resized to ``height`` x ``width``: frames are paired
    (temporal patch 2), then as :func:`image_tokens`."""
    return (nframes // FRAME_FACTOR) * image_tokens(height, width)


def padded_frame_count(n: int) -> int:
    """Frame lists are padded (repeating the last frame) to a multiple of FRAME_FACTOR."""
    return ceil_by_factor(n, FRAME_FACTOR)
