"""Media limits and policy: the ``media:`` section of the app's YAML config."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import vision_math as vm

MiB = 1024 * 1024


class MediaConfig(BaseModel):
    """Every limit has a default that is safe on a cluster-wide endpoint.

    Pixel/frame defaults are Qwen2.5-VL's (qwen-vl-utils 0.0.14); per-request options may ask
    for less or for other values within ``[image_min_pixels, image_max_pixels]`` bounds checked
    in ``MediaLoader.validate_options``.
    """

    model_config = ConfigDict(extra="forbid")

    # --- where media may come from -------------------------------------------------------
    allowed_local_roots: list[str] = Field(default_factory=list,
        description="Local paths / file:// URLs are read only under these directories (resolved, "
                    "symlinks followed, then checked). Empty: local files refused.")
    allow_hosts: list[str] = Field(default_factory=list,
        description="Hostnames (exact, or '*.suffix') or CIDRs exempt from the private-address refusal.")
    allow_http: bool = Field(True, description="Allow plain http:// URLs (https:// always allowed).")
    allow_data_uris: bool = True

    # --- network --------------------------------------------------------------------------
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0, description="Max wait for each chunk of the response.")
    fetch_timeout_s: float = Field(60.0, gt=0, description="Max time for one whole download incl. redirects.")
    fetch_min_bytes_per_s: float = Field(65536.0, ge=0,
        description="Per-source time budget: after fetch_rate_grace_s, a download's body must keep up this "
                    "average rate (N bytes may take fetch_rate_grace_s + N / rate seconds, at most "
                    "fetch_timeout_s); a source trickling bytes fails then with a 400 instead of holding a "
                    "preprocessor slot until fetch_timeout_s. 0: no rate budget.")
    fetch_rate_grace_s: float = Field(5.0, gt=0,
        description="Seconds a download gets for connecting, the response headers and its first bytes "
                    "before fetch_min_bytes_per_s applies.")
    max_redirects: int = Field(3, ge=0, le=20)
    max_connections: int = Field(64, ge=1)
    user_agent: str = "serve-app-media/1.0"

    # --- size limits ----------------------------------------------------------------------
    max_image_bytes: int = Field(32 * MiB, gt=0)
    max_video_bytes: int = Field(512 * MiB, gt=0)
    max_data_uri_bytes: int = Field(32 * MiB, gt=0, description="Decoded size cap of a data: URI.")
    max_image_pixels: int = Field(100_000_000, gt=0,
        description="Source width*height, checked from the header before decoding (decompression bombs).")
    max_video_frame_pixels: int = Field(8192 * 4352, gt=0, description="Source frame width*height of a video.")
    max_video_frames: int = Field(vm.FPS_MAX_FRAMES, ge=2,
        description="Most frames handed to the model per video (sampled, or listed).")
    max_video_source_frames: int = Field(200_000, ge=1, description="Most frames in a source clip.")
    max_video_decode_pixels: float = Field(2e10, gt=0, description="Source pixels decoded to sample one video "
                                           "(frames the decoder must produce x frame size), checked from the "
                                           "container index before decoding.")
    max_video_duration_s: float = Field(3600.0, gt=0)
    prepare_timeout_s: float = Field(120.0, gt=0, description="Deadline for all of one request's media "
                                     "(fetch, decode, resize); past it every fetch and decode of the request is "
                                     "cancelled and the client gets a 504.")
    max_items_per_request: int = Field(32, ge=1)

    # --- cache ----------------------------------------------------------------------------
    cache_max_bytes: int = Field(1024 * MiB, ge=0, description="Decoded-output LRU cache (0 disables).")
    cache_url_ttl_s: float = Field(300.0, ge=0,
        description="How long an http(s) URL's result is reused without refetching (0: always refetch; the "
                    "content-addressed cache still skips decoding bytes seen before).")

    # --- Qwen2.5-VL defaults (qwen-vl-utils 0.0.14) ---------------------------------------
    image_min_pixels: int = Field(vm.MIN_PIXELS, gt=0)
    image_max_pixels: int = Field(vm.MAX_PIXELS, gt=0)
    image_detail_low_max_pixels: int = Field(256 * 28 * 28, gt=0,
        description="image_url.detail 'low': pixel budget (default 256 x 28^2: at most 256 visual tokens).")
    image_detail_high_max_pixels: int | None = Field(None, gt=0,
        description="image_url.detail 'high': pixel budget (default: image_max_pixels, the model's cap). "
                    "'auto' keeps image_min_pixels..image_max_pixels.")
    video_fps: float = Field(vm.FPS, gt=0)
    video_min_frames: int = Field(vm.FPS_MIN_FRAMES, ge=1)
    video_max_frames: int = Field(vm.FPS_MAX_FRAMES, ge=2)
    video_min_pixels: int = Field(vm.VIDEO_MIN_PIXELS, gt=0)
    video_max_pixels: int = Field(vm.VIDEO_MAX_PIXELS, gt=0)
    video_total_pixels: float = Field(vm.VIDEO_TOTAL_PIXELS, gt=0)

    # --- decode ---------------------------------------------------------------------------
    decode_mode: Literal["fast", "accurate", "reference"] = Field("fast",
        description="reference: the literal Pillow calls of qwen-vl-utils (bit-exact images). "
                    "accurate: libjpeg-turbo decode + torch's port of Pillow's resampler (mean |delta| "
                    "<= 0.01 level, a few pixels off by 1-3). fast: also reduced-scale JPEG decoding when "
                    "the target is < 1/1.7 of the source and OpenCV cubic for large near-identity "
                    "resizes (mean |delta| <= 0.5 level, see bench/README.md).")
    jpeg_reduce_margin: float = Field(1.7, ge=1.0,
        description="fast mode: decode a JPEG at 1/2^k scale only if still >= this many times the target.")
    decode_threads: int = Field(0, ge=0, description="Decode thread pool size (0: number of CPUs).")
    library_threads: int | None = Field(1, ge=1,
        description="MediaLoader() sets torch's and OpenCV's process-wide intra-op thread counts to this "
                    "(None: leave them). 1 because the decode pool already runs one item per core; nested "
                    "thread pools oversubscribe the CPU (10-30x slower under load, measured). Only construct "
                    "a MediaLoader in the preprocessing process, not inside a CPU vLLM engine process.")
    tune_malloc: bool = Field(True,
        description="MediaLoader() raises glibc's mmap threshold to 256 MiB and trim threshold to 512 MiB, "
                    "so large decode buffers are reused instead of page-faulted in anew (~35 ms per 12 MP "
                    "image); up to 512 MiB of freed memory may stay in the process. See media/tuning.py.")

    @field_validator("allow_hosts")
    @classmethod
    def _check_hosts(cls, v: list[str]) -> list[str]:
        out = []
        for h in v:
            h = h.strip().lower().rstrip(".")
            if not h:
                raise ValueError("empty allow_hosts entry")
            if "/" in h:
                ipaddress.ip_network(h, strict=False)  # raises ValueError if malformed
            out.append(h)
        return out

    @model_validator(mode="after")
    def _check_ranges(self) -> "MediaConfig":
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels must be <= image_max_pixels")
        if self.video_min_pixels > self.video_max_pixels:
            raise ValueError("video_min_pixels must be <= video_max_pixels")
        if self.video_min_frames > self.video_max_frames:
            raise ValueError("video_min_frames must be <= video_max_frames")
        for k in ("image_detail_low_max_pixels", "image_detail_high_max_pixels"):
            v = getattr(self, k)
            if k in self.model_fields_set and v is not None and not self.image_min_pixels <= v <= self.image_max_pixels:
                raise ValueError(f"{k} must be between image_min_pixels and image_max_pixels")
        return self
