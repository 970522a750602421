"""One media content part of a request, and its validation (pure: no I/O, no threads)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .config import MediaConfig
from .errors import MediaError
from .fetch import source_kind

IMAGE_OPTIONS = frozenset({"min_pixels", "max_pixels", "resized_height", "resized_width"})
VIDEO_OPTIONS = IMAGE_OPTIONS | frozenset({"fps", "nframes", "min_frames", "max_frames", "total_pixels",
                                           "video_start", "video_end", "sample_fps"})
_INT_OPTIONS = frozenset({"resized_height", "resized_width", "nframes", "min_frames", "max_frames"})
_MAX_SIDE = 32768


@dataclass(frozen=True)
class MediaSpec:
    kind: Literal["image", "video"]
    source: str | list[str]  # http(s) URL, data: URI, local path or file:// URL; video: also a list of frames
    options: Mapping[str, Any] = field(default_factory=dict)
    where: str = "media"  # e.g. "messages[0].content[1]"; prefixes every MediaError message


def check_item_count(specs: Sequence[MediaSpec], limit: int) -> None:
    """At most ``limit`` images and videos in one request."""
    if len(specs) > limit:
        raise MediaError(f"{specs[limit].where}: the request has {len(specs)} media items, more than the "
                         f"limit of {limit} (this server accepts at most {limit} per request)")


def validate_spec(spec: MediaSpec, config: MediaConfig) -> None:
    """Raise MediaError for an unknown or invalid option, kind or source shape. Cheap, no I/O: the
    ingress runs it on every item, so a client error is answered before any replica hop."""
    w = spec.where
    if spec.kind not in ("image", "video"):
        raise MediaError(f"{w}: unknown media kind {spec.kind!r}")
    if isinstance(spec.source, (list, tuple)):
        if spec.kind != "video":
            raise MediaError(f"{w}: a list of frames is only accepted for video")
        if not spec.source:
            raise MediaError(f"{w}: the frame list is empty")
        if len(spec.source) > config.max_video_frames:
            raise MediaError(f"{w}: {len(spec.source)} frames given, more than the limit of "
                             f"{config.max_video_frames}")
        srcs = list(spec.source)
    else:
        srcs = [spec.source]
    for s in srcs:
        if not isinstance(s, str) or not s.strip():
            raise MediaError(f"{w}: media source must be a non-empty string (URL, data: URI or path)")
        try:
            kind = source_kind(s)
        except MediaError as e:
            raise e.with_where(w) from None
        if kind == "data" and not config.allow_data_uris:
            raise MediaError(f"{w}: data: URIs are not allowed on this server")
        if kind == "file" and not config.allowed_local_roots:
            raise MediaError(f"{w}: local file paths are not allowed on this server")
    opts = dict(spec.options or {})
    allowed = IMAGE_OPTIONS if spec.kind == "image" else VIDEO_OPTIONS
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise MediaError(f"{w}: unknown {spec.kind} option(s) {', '.join(unknown)} "
                         f"(supported: {', '.join(sorted(allowed))})")
    for k, v in opts.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MediaError(f"{w}: option {k} must be a number, got {v!r}")
        if k in _INT_OPTIONS and v != int(v):
            raise MediaError(f"{w}: option {k} must be an integer, got {v!r}")
        if k in ("video_start", "video_end"):
            if v < 0:
                raise MediaError(f"{w}: option {k} must be >= 0, got {v!r}")
        elif v <= 0:
            raise MediaError(f"{w}: option {k} must be > 0, got {v!r}")
    c = config
    if ("resized_height" in opts) != ("resized_width" in opts):
        raise MediaError(f"{w}: resized_height and resized_width must be given together")
    for k in ("resized_height", "resized_width"):
        if k in opts and opts[k] > _MAX_SIDE:
            raise MediaError(f"{w}: option {k} must be <= {_MAX_SIDE}, got {opts[k]!r}")
    if spec.kind == "image":
        lo, hi = opts.get("min_pixels", c.image_min_pixels), opts.get("max_pixels", c.image_max_pixels)
        cap = c.image_max_pixels
    else:
        lo, hi = opts.get("min_pixels", c.video_min_pixels), opts.get("max_pixels", c.video_max_pixels)
        cap = max(c.video_max_pixels, c.image_max_pixels)
    for k in ("min_pixels", "max_pixels"):
        if k in opts and opts[k] > cap:
            raise MediaError(f"{w}: option {k} must be <= {cap}, got {opts[k]!r}")
    if "max_pixels" in opts and lo > hi:
        raise MediaError(f"{w}: max_pixels ({hi}) must be >= min_pixels ({lo})")
    if spec.kind == "video":
        if "fps" in opts and "nframes" in opts:
            raise MediaError(f"{w}: only one of fps and nframes may be given")
        if "nframes" in opts and not (2 <= opts["nframes"] <= c.max_video_frames):
            raise MediaError(f"{w}: nframes must be between 2 and {c.max_video_frames}, got {opts['nframes']}")
        if "max_frames" in opts and opts["max_frames"] > c.max_video_frames:
            raise MediaError(f"{w}: max_frames must be <= {c.max_video_frames}, got {opts['max_frames']}")
        if "min_frames" in opts and opts["min_frames"] > c.max_video_frames:
            raise MediaError(f"{w}: min_frames must be <= {c.max_video_frames}, got {opts['min_frames']}")
        if "fps" in opts and opts["fps"] > 240:
            raise MediaError(f"{w}: fps must be <= 240, got {opts['fps']}")
        if "total_pixels" in opts and opts["total_pixels"] > c.video_total_pixels:
            raise MediaError(f"{w}: total_pixels must be <= {c.video_total_pixels:g}, got {opts['total_pixels']}")
        vs, ve = opts.get("video_start"), opts.get("video_end")
        if vs is not None and ve is not None and vs >= ve:
            raise MediaError(f"{w}: video_start ({vs}) must be before video_end ({ve})")
