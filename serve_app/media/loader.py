"""Turning a request's media content parts into model-ready images and videos.

``MediaLoader.load`` fetches all items of a request concurrently and reads their headers (container
index for videos), checks the request's token budget against what they will become, then decodes
them in a thread pool (off the event loop); it caches results by content (and URLs by source, for
``cache_url_ttl_s``) and raises ``MediaError("<where>: <reason>")`` for the first item that cannot
be used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from . import vision_math as vm
from serve_app.observability import metrics

from .cache import ByteLRU
from .config import MediaConfig
from .errors import MediaError
from .fetch import Fetched, Fetcher, source_kind
from .image import decode_image, image_target
from .netguard import Resolver
from .resize import ResizeTally, resize_video_frame, tally
from .spec import IMAGE_OPTIONS, VIDEO_OPTIONS, MediaSpec, check_item_count, validate_spec  # noqa: F401 - re-exported
from .token_budget import TokenBudget, check_tokens
from .tuning import set_library_threads, tune_malloc
from .video import VideoDefaults, VideoLimits, decode_planned, plan_video

log = logging.getLogger(__name__)

PIPELINE_VERSION = "qwen2.5-vl/qwen-vl-utils-0.0.14/v1"

FRAME_FETCH_CONCURRENCY = 8


class LoadedImage:
    """A decoded image: RGB, resized exactly as qwen-vl-utils would, plus its content id.

    Holds the pixels as whichever the decoder produced -- a PIL image or a uint8 [H, W, 3] array --
    and converts on first access. Hand ``array`` to vLLM (it takes HWC uint8 arrays): for a 12 MP
    image that skips ~30 ms building a PIL image and ~40 ms of ``np.asarray`` on it. Pickles as the
    array (one out-of-band buffer in Ray).
    """

    __slots__ = ("uuid", "_image", "_array")

    def __init__(self, image: Image.Image | None = None, uuid: str = "", *, array: np.ndarray | None = None):
        if image is None and array is None:
            raise ValueError("LoadedImage needs an image or an array")
        self.uuid = uuid  # stable content id -> vLLM multi_modal_uuids
        self._image = image
        self._array = array

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = Image.fromarray(self._array, "RGB")
        return self._image

    @property
    def array(self) -> np.ndarray:
        """uint8 [H, W, 3], read-only."""
        if self._array is None:
            a = np.asarray(self._image)
            a.flags.writeable = False
            self._array = a
        return self._array

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), like PIL."""
        if self._image is not None:
            return self._image.size
        return self._array.shape[1], self._array.shape[0]

    @property
    def nbytes(self) -> int:
        w, h = self.size
        return w * h * 3

    def __getstate__(self):
        return {"uuid": self.uuid, "array": self.array}

    def __setstate__(self, state):
        self.uuid, self._array, self._image = state["uuid"], state["array"], None

    def __repr__(self) -> str:
        return f"LoadedImage(size={self.size}, uuid={self.uuid[:12]}...)"


@dataclass
class LoadedVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3], T even, resized
    # metadata: fps (the SOURCE fps, as in qwen-vl-utils' video_metadata and transformers'
    # VideoMetadata, whose sampled_fps = len(frames_indices) / total_num_frames * fps is then the
    # sampling fps), frames_indices, total_num_frames (in the sampled range), duration (s),
    # sample_fps (qwen-vl-utils' `video_sample_fps`), video_backend, width, height.
    metadata: dict
    uuid: str

    @property
    def sample_fps(self) -> float:
        """Frames per second of the sampled frames (qwen-vl-utils' ``return_video_sample_fps``)."""
        return float(self.metadata["sample_fps"])


def _canon(options: Mapping[str, Any]) -> str:
    return json.dumps({k: options[k] for k in sorted(options)}, separators=(",", ":"), default=str)


class MediaLoader:
    def __init__(self, config: MediaConfig | None = None, *, resolver: Resolver | None = None,
                 network_backend=None, executor: ThreadPoolExecutor | None = None):
        self.config = config or MediaConfig()
        self.fetcher = Fetcher(self.config, resolver=resolver, network_backend=network_backend)
        self.cache: ByteLRU[LoadedImage | LoadedVideo] = ByteLRU(self.config.cache_max_bytes)
        n = self.config.decode_threads or (os.cpu_count() or 1)
        self._executor = executor or ThreadPoolExecutor(max_workers=n, thread_name_prefix="media-decode")
        self._limits = VideoLimits(
            max_frame_pixels=self.config.max_video_frame_pixels,
            max_source_frames=self.config.max_video_source_frames,
            max_duration_s=self.config.max_video_duration_s,
            max_sampled_frames=self.config.max_video_frames,
            max_decode_pixels=self.config.max_video_decode_pixels,
        )
        c = self.config
        if c.library_threads is not None:
            set_library_threads(c.library_threads)
        if c.tune_malloc:
            tune_malloc()
        self._vdefaults = VideoDefaults(fps=c.video_fps, min_frames=c.video_min_frames, max_frames=c.video_max_frames,
                                        min_pixels=c.video_min_pixels, max_pixels=c.video_max_pixels,
                                        total_pixels=c.video_total_pixels)

    def warmup(self) -> None:
        """Import the decoders (torch, PyAV, simplejpeg, OpenCV) now rather than on the first request."""
        from . import resize

        resize._torch()
        resize._cv2()
        import av  # noqa: F401
        import simplejpeg  # noqa: F401

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ validation (no I/O)
    def validate_options(self, spec: MediaSpec) -> None:
        validate_spec(spec, self.config)

    # ------------------------------------------------------------------ loading
    async def load(self, specs: Sequence[MediaSpec], token_budget: TokenBudget | None = None,
                   ) -> list[LoadedImage | LoadedVideo]:
        """Every item fetched and its header (or container index) read, then ``token_budget``
        checked against what the items will become, and only then any item decoded."""
        specs = list(specs)
        check_item_count(specs, self.config.max_items_per_request)
        for s in specs:
            self.validate_options(s)
        if not specs:
            return []
        plans = await self._each(specs, self._plan)
        if token_budget is not None:
            try:
                check_tokens(specs, [p.tokens for p in plans], token_budget, exact=True)
            except MediaError as e:
                metrics.count_media_error(metrics.media_error_reason(e))
                raise
        return await self._each(specs, lambda spec, i: plans[i].finish())

    async def _each(self, specs: list[MediaSpec], step) -> list:
        """``step(spec, i)`` for every item at once; the first failure (in request order) is raised
        and the other items' work cancelled."""
        if len(specs) == 1:
            return [await self._guarded(specs[0], step(specs[0], 0))]
        tasks = [asyncio.ensure_future(self._guarded(s, step(s, i))) for i, s in enumerate(specs)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in tasks:  # report the first failing item in request order
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()
            return [t.result() for t in tasks]
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()

    async def _guarded(self, spec: MediaSpec, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except MediaError as e:
            metrics.count_media_error(metrics.media_error_reason(e))
            raise e.with_where(spec.where) from None
        except asyncio.CancelledError:
            raise
        except MemoryError:
            metrics.count_media_error("too_large")
            raise MediaError(f"{spec.where}: {spec.kind} is too large to decode") from None
        except Exception as e:  # a decoder bug or an input we did not foresee: still the client's 400
            metrics.count_media_error("unexpected")
            # One line (no traceback, no source): the class says which decoder path to look at.
            log.warning("unexpected error loading %s: %s", spec.where, type(e).__name__)
            raise MediaError(f"{spec.where}: cannot load {spec.kind}: the data is damaged or not a supported "
                             f"{spec.kind} format") from None

    async def _plan(self, spec: MediaSpec, _i: int = 0) -> "_Planned":
        if spec.kind == "image":
            return await self._plan_image(spec)
        if isinstance(spec.source, str):
            return await self._plan_video(spec)
        return await self._plan_frame_list(spec)

    def _effective(self, spec: MediaSpec) -> dict[str, Any]:
        """Options incl. the config defaults that shape the output (for cache keys and uuids)."""
        c = self.config
        eff: dict[str, Any] = {"kind": spec.kind, "v": PIPELINE_VERSION}
        if spec.kind == "image":
            eff.update(min_pixels=c.image_min_pixels, max_pixels=c.image_max_pixels, decode_mode=c.decode_mode)
        else:
            eff.update(fps=c.video_fps, min_frames=c.video_min_frames, max_frames=c.video_max_frames,
                       min_pixels=c.video_min_pixels, max_pixels=c.video_max_pixels,
                       total_pixels=c.video_total_pixels, decode_mode=c.decode_mode)
            if "nframes" in spec.options:
                eff.pop("fps")
        eff.update(spec.options)
        return eff

    async def _fetch(self, source: str, max_bytes: int) -> Fetched:
        t0 = time.monotonic()
        fetched = await self.fetcher.fetch(source, max_bytes=max_bytes)
        metrics.observe_stage("media_fetch", time.monotonic() - t0)
        metrics.count_media_bytes(source_kind(source), len(fetched.data))
        return fetched

    async def _decode(self, fn, *args, probe_s: float = 0.0, **kwargs):
        """``fn`` (decode and resize) in the decode threads: the resizes it runs timed as media_resize,
        the rest (decoding, colour conversion, waiting for a decode thread) as media_decode together
        with the item's header probe (``probe_s``): one observation of each per item."""
        box: list[ResizeTally] = []

        def run():
            with tally() as t:
                box.append(t)
                return fn(*args, **kwargs)

        t0 = time.monotonic()
        try:
            return await self._run(run)
        finally:
            # A cancelled request's thread may still be running: its resizes so far are what counts.
            resized = box[0] if box else None
            resize_s = resized.seconds if resized is not None else 0.0
            metrics.observe_stage("media_decode", time.monotonic() - t0 - resize_s + probe_s)
            if resized is not None and resized.calls:
                metrics.observe_stage("media_resize", resize_s)

    async def _probe(self, fn, *args, **kwargs):
        """``fn`` (a header or container-index read) in the decode threads -> (result, seconds)."""
        t0 = time.monotonic()
        out = await self._run(fn, *args, **kwargs)
        return out, time.monotonic() - t0

    async def _digest(self, data: bytes) -> str:
        """sha256 hex of the media bytes; large payloads hashed off the event loop (~1.5 ms per 2.7 MB)."""
        if len(data) < (1 << 20):
            return hashlib.sha256(data).hexdigest()
        return await self._run(lambda: hashlib.sha256(data).hexdigest())

    async def _run(self, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _ready(self, result: LoadedImage | LoadedVideo, src_key: str | None = None,
               content_key: str | None = None) -> "_Planned":
        self._alias(src_key, content_key)

        async def finish():
            return result
        return _Planned(_tokens_of(result), finish)

    def _alias(self, src_key: str | None, content_key: str | None) -> None:
        """The source's key as an alias of the content entry; expires after the TTL."""
        if src_key is not None and content_key is not None:
            self.cache.put(src_key, content_key, 256, ttl=self.config.cache_url_ttl_s)

    async def _plan_cached(self, spec: MediaSpec, source: str, max_bytes: int, probe, compute) -> "_Planned":
        """Source-key cache (URLs, with TTL) -> fetch -> content-key cache -> ``probe(fetched)``
        (header only: ``(tokens, state)``); the plan's ``finish`` runs ``compute(fetched, uuid, state,
        probe seconds)``
        (shared by concurrent requests for the same content)."""
        opts = _canon(self._effective(spec))
        src_key = None
        if source_kind(source) == "http" and self.config.cache_url_ttl_s > 0:  # local files: re-read (cheap)
            src_key = "src:" + hashlib.sha256(f"{source}\x00{opts}".encode()).hexdigest()

        async def from_source():
            fetched = await self._fetch(source, max_bytes)
            digest = await self._digest(fetched.data)
            content_key = "content:" + hashlib.sha256(f"{digest}\x00{opts}".encode()).hexdigest()
            hit = self.cache.get(content_key)
            if hit is not None:
                self.cache.hits += 1
                return self._ready(hit, src_key, content_key)
            (tokens, state), probe_s = await self._probe(probe, fetched)
            uuid = hashlib.sha256(f"{PIPELINE_VERSION}\x00{digest}\x00{opts}".encode()).hexdigest()

            async def compute_and_keep():
                result = await compute(fetched, uuid, state, probe_s)
                self.cache.put(content_key, result, _nbytes(result))
                return result

            async def finish():
                result = await self.cache.get_or_compute(content_key, compute_and_keep)
                self._alias(src_key, content_key)
                return result
            return _Planned(tokens, finish)

        if src_key is None:
            return await from_source()

        async def via_source():
            content_key = self.cache.get(src_key)
            if isinstance(content_key, str):
                hit = self.cache.get(content_key)
                if hit is not None:
                    self.cache.hits += 1
                    return self._ready(hit)
            return await from_source()

        return await self.cache.single_flight(src_key, via_source)

    async def _plan_image(self, spec: MediaSpec) -> "_Planned":
        c = self.config

        def probe(fetched: Fetched):
            th, tw = image_target(fetched.data, spec.options, max_pixels=c.max_image_pixels,
                                  min_target_pixels=c.image_min_pixels, max_target_pixels=c.image_max_pixels,
                                  content_type=fetched.content_type)
            return vm.image_tokens(th, tw), None

        async def compute(fetched: Fetched, uuid: str, _state, probe_s: float) -> LoadedImage:
            img = await self._decode(decode_image, fetched.data, spec.options, probe_s=probe_s,
                                     max_pixels=c.max_image_pixels,
                                     min_target_pixels=c.image_min_pixels, max_target_pixels=c.image_max_pixels,
                                     content_type=fetched.content_type, mode=c.decode_mode,
                                     margin=c.jpeg_reduce_margin, output="any")
            if isinstance(img, np.ndarray):
                img.flags.writeable = False
                return LoadedImage(uuid=uuid, array=img)
            return LoadedImage(image=img, uuid=uuid)

        return await self._plan_cached(spec, spec.source, c.max_image_bytes, probe, compute)

    async def _plan_video(self, spec: MediaSpec) -> "_Planned":
        c = self.config

        def probe(fetched: Fetched):
            plan = plan_video(fetched.data, spec.options, limits=self._limits, defaults=self._vdefaults)
            return plan.tokens, plan

        async def compute(fetched: Fetched, uuid: str, plan, probe_s: float) -> LoadedVideo:
            frames, meta = await self._decode(decode_planned, fetched.data, plan, mode=c.decode_mode, probe_s=probe_s)
            frames.flags.writeable = False
            return LoadedVideo(frames=frames, metadata=meta, uuid=uuid)

        return await self._plan_cached(spec, spec.source, c.max_video_bytes, probe, compute)

    async def _plan_frame_list(self, spec: MediaSpec) -> "_Planned":
        """qwen-vl-utils 0.0.14 frame lists: each frame through fetch_image at factor 56, padded to
        even by repeating the last, then the video resize rule at factor 28.

        Bounded: at most FRAME_FETCH_CONCURRENCY downloads at once, max_video_bytes for all frames
        together, the first frame's header fixes everyone's size (and the tokens) before any decode,
        and each frame is taken to its final size right after decoding (the factor-56 intermediate
        can be ~50 MP per frame)."""
        c = self.config
        sources = list(spec.source)
        total = [0]
        sem = asyncio.Semaphore(FRAME_FETCH_CONCURRENCY)

        async def fetch_at(i: int, src: str) -> Fetched:
            async with sem:
                try:
                    f = await self._fetch(src, c.max_image_bytes)
                except MediaError as e:
                    raise MediaError(f"frame {i}: {e}") from None
            total[0] += len(f.data)
            if total[0] > c.max_video_bytes:
                raise MediaError(f"the frames are larger than the limit of {c.max_video_bytes} bytes together")
            return f

        fetched = await asyncio.gather(*(fetch_at(i, s) for i, s in enumerate(sources)))
        opts = dict(spec.options)
        f1 = vm.IMAGE_FACTOR * vm.SPATIAL_MERGE_SIZE
        img_opts = {k: v for k, v in opts.items() if k in IMAGE_OPTIONS}
        digests = [await self._digest(f.data) for f in fetched]
        eff = _canon(self._effective(spec))
        uuid = hashlib.sha256(f"{PIPELINE_VERSION}\x00frames\x00{','.join(digests)}\x00{eff}".encode()).hexdigest()
        key = "content:" + uuid
        hit = self.cache.get(key)
        if hit is not None:
            return self._ready(hit)
        n = vm.padded_frame_count(len(fetched))
        step1_size = dict(max_pixels=c.max_image_pixels, min_target_pixels=vm.IMAGE_MIN_TOKEN_NUM * f1**2,
                          max_target_pixels=vm.IMAGE_MAX_TOKEN_NUM * f1**2, factor=f1)
        try:
            (h1, w1), _ = await self._probe(image_target, fetched[0].data, img_opts,
                                            content_type=fetched[0].content_type, **step1_size)
        except MediaError as e:
            raise MediaError(f"frame 0: {e}") from None
        th, tw = vm.video_target_size(h1, w1, n, opts, min_pixels=c.video_min_pixels,
                                      max_pixels=c.video_max_pixels, total_pixels=c.video_total_pixels)

        def step1(f: Fetched) -> np.ndarray:
            img = decode_image(f.data, img_opts, content_type=f.content_type, mode=c.decode_mode,
                               margin=c.jpeg_reduce_margin, output="any", **step1_size)
            return img if isinstance(img, np.ndarray) else np.asarray(img)

        async def run_step(i: int, fn, *args):
            try:
                return await self._decode(fn, *args)
            except MediaError as e:
                raise MediaError(f"frame {i}: {e}") from None

        def finish_frame(out: np.ndarray, i: int, f: Fetched) -> None:
            a = step1(f)
            if a.shape[:2] != (h1, w1):
                raise MediaError(f"all frames of a frame list must have the same size, got {w1}x{h1} "
                                 f"for frame 0 and {a.shape[1]}x{a.shape[0]} after resizing")
            out[i] = resize_video_frame(a, (tw, th), c.decode_mode)

        async def finish() -> LoadedVideo:
            out = np.empty((n, th, tw, 3), np.uint8)
            jobs, seen = [], {}
            for i, f in enumerate(fetched):  # identical frames are decoded once
                if digests[i] in seen:
                    continue
                seen[digests[i]] = i
                jobs.append(run_step(i, finish_frame, out, i, f))
            await asyncio.gather(*jobs)
            for i in range(len(fetched)):
                j = seen[digests[i]]
                if j != i:
                    out[i] = out[j]
            out[len(fetched):] = out[len(fetched) - 1]  # pad to even with the last frame
            out.flags.writeable = False
            sample_fps = float(opts.get("sample_fps", 2.0))
            meta = {"fps": sample_fps, "frames_indices": list(range(n)), "total_num_frames": n,
                    "duration": n / sample_fps, "sample_fps": sample_fps, "video_backend": "frames"}
            result = LoadedVideo(frames=out, metadata=meta, uuid=uuid)
            self.cache.put(key, result, _nbytes(result))
            return result

        return _Planned(vm.video_tokens(n, th, tw), finish)


@dataclass
class _Planned:
    """One item fetched and its header (or container index) read; nothing decoded yet."""
    tokens: int  # what the engine will count for it
    finish: Callable[[], Awaitable[LoadedImage | LoadedVideo]]


def _tokens_of(r: LoadedImage | LoadedVideo) -> int:
    if isinstance(r, LoadedImage):
        w, h = r.size
        return vm.image_tokens(h, w)
    return vm.video_tokens(*r.frames.shape[:3])


def _nbytes(r: LoadedImage | LoadedVideo) -> int:
    if isinstance(r, LoadedImage):
        return r.nbytes + 256
    return int(r.frames.nbytes) + 256
