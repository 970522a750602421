"""Equivalence with the real qwen-vl-utils 0.0.14 (the version in requirements/cpu.lock).

Output sizes, frame counts, frame indices and sampling fps must be identical. Pixels: bit-exact in
``decode_mode="reference"`` and wherever ``accurate`` picks Pillow; elsewhere within the tolerance
stated in bench/README.md (accurate: mean |delta| <= 0.05, max 2; fast: mean <= 0.5, p99 <= 3).
qwen-vl-utils is only ever given local files, PIL images or tensors (it would fetch URLs itself).
"""

from __future__ import annotations

import io
import math

import av
import numpy as np
import pytest
import torch
from PIL import Image

qv = pytest.importorskip("qwen_vl_utils.vision_process")

from serve_app.dev import synth_media as synth
from serve_app.media import MediaConfig, MediaError, MediaLoader, MediaSpec  # noqa: E402
from serve_app.media import vision_math as vm  # noqa: E402
from serve_app.media.image import decode_image  # noqa: E402
from serve_app.media.video import decode_video  # noqa: E402
from serve_app.media.tuning import library_threads  # noqa: E402


@pytest.fixture(autouse=True)
def _one_library_thread():
    """MediaLoader sets torch/OpenCV to 1 thread (MediaConfig.library_threads); restore afterwards so
    other test modules in this process keep their settings."""
    with library_threads(1):
        yield


F28 = 28 * 28


def test_installed_version_is_the_one_we_match():
    from importlib.metadata import version

    assert version("qwen-vl-utils") == "0.0.14"
    assert (vm.MIN_PIXELS, vm.MAX_PIXELS, vm.VIDEO_MIN_PIXELS, vm.VIDEO_MAX_PIXELS) == (
        qv.IMAGE_MIN_TOKEN_NUM * F28, qv.IMAGE_MAX_TOKEN_NUM * F28, qv.VIDEO_MIN_TOKEN_NUM * F28,
        qv.VIDEO_MAX_TOKEN_NUM * F28)
    assert (vm.FPS, vm.FRAME_FACTOR, vm.FPS_MIN_FRAMES, vm.FPS_MAX_FRAMES, vm.MAX_RATIO) == (
        qv.FPS, qv.FRAME_FACTOR, qv.FPS_MIN_FRAMES, qv.FPS_MAX_FRAMES, qv.MAX_RATIO)
    assert vm.VIDEO_TOTAL_PIXELS == qv.MODEL_SEQ_LEN * F28 * 0.9


# ----------------------------------------------------------------------------- smart_resize
SIDES = [1, 2, 13, 14, 15, 27, 28, 29, 31, 42, 55, 56, 70, 100, 333, 639, 1000, 1080, 1920, 2000, 2800,
         3000, 4000, 5600, 8000, 20000]
LIMITS = [(None, None), (None, 20 * F28), (None, 256 * F28), (None, 1280 * F28), (256 * F28, 1280 * F28),
          (1000 * F28, None), (4 * F28, 4 * F28)]


def test_smart_resize_table_matches_qwen():
    checked = guarded = 0
    for h in SIDES:
        for w in SIDES:
            for lo, hi in LIMITS:
                kw = {"min_pixels": lo, "max_pixels": hi}
                try:
                    ref = qv.smart_resize(h, w, 28, **kw)
                except ValueError:
                    with pytest.raises(MediaError):
                        vm.smart_resize(h, w, 28, **kw)
                    continue
                ours = vm.smart_resize(h, w, 28, **kw)
                if min(ref) == 0:
                    # qwen-vl-utils returns a 0 side (and then crashes in the resize); we apply
                    # transformers' max(factor, ...) guard to the shrinking branch
                    guarded += 1
                    assert ours == tuple(max(28, v) for v in ref), (h, w, kw)
                else:
                    assert ours == ref, (h, w, kw)
                    checked += 1
    assert checked > 3000 and guarded > 0


@pytest.mark.parametrize("h,w,kw,expected", [
    (31, 639, {"max_pixels": 20 * F28}, (28, 560)),  # qwen-vl-utils: (0, 560)
    (3000, 4000, {"max_pixels": 1280 * F28}, (840, 1148)),
    (3000, 4000, {}, (2996, 4004)),
    (1080, 1920, {"max_pixels": 1280 * F28}, (728, 1316)),
    (10, 2000, {}, (28, 1988)),  # aspect ratio exactly 200 is allowed
    (28, 5600, {}, (28, 5600)),
    (42, 42, {}, (56, 56)),  # round(1.5) == 2, and min_pixels
    (70, 70, {}, (56, 56)),  # round(2.5) == 2: half to even
    (98, 98, {}, (112, 112)),  # round(3.5) == 4
])
def test_smart_resize_edge_cases(h, w, kw, expected):
    assert vm.smart_resize(h, w, **kw) == expected
    ref = qv.smart_resize(h, w, 28, **kw)
    assert ref == expected or min(ref) == 0


def test_smart_resize_ratio_above_200_is_an_error():
    for h, w in [(10, 2001), (2001, 10), (1, 201), (3, 700)]:
        with pytest.raises(ValueError):
            qv.smart_resize(h, w, 28)
        with pytest.raises(MediaError, match="aspect ratio"):
            vm.smart_resize(h, w)


def test_smart_resize_min_above_max_is_an_error():
    with pytest.raises(AssertionError):
        qv.smart_resize(100, 100, 28, min_pixels=2000, max_pixels=1000)
    with pytest.raises(MediaError, match="max_pixels"):
        vm.smart_resize(100, 100, min_pixels=2000, max_pixels=1000)


# ----------------------------------------------------------------------------- frame sampling
NFRAME_OPTS = [{}, {"fps": 0.5}, {"fps": 1}, {"fps": 2}, {"fps": 4.5}, {"fps": 30}, {"nframes": 2},
               {"nframes": 3}, {"nframes": 7}, {"nframes": 8}, {"nframes": 64}, {"min_frames": 8},
               {"max_frames": 10}, {"max_frames": 11}, {"fps": 1, "min_frames": 3, "max_frames": 33},
               {"min_frames": 1000}]


def test_smart_nframes_table_matches_qwen():
    n_ok = n_err = 0
    for total in [1, 2, 3, 4, 5, 7, 8, 30, 45, 100, 1799, 1800, 100000]:
        for fps in [1, 10, 23.976023976023978, 25, 29.97002997002997, 30, 60, 120]:
            for opts in NFRAME_OPTS:
                try:
                    ref = qv.smart_nframes(dict(opts), total_frames=total, video_fps=fps)
                except (ValueError, AssertionError):
                    with pytest.raises(MediaError):
                        vm.smart_nframes(opts, total, fps)
                    n_err += 1
                    continue
                assert vm.smart_nframes(opts, total, fps) == ref, (total, fps, opts)
                n_ok += 1
    assert n_ok > 1000 and n_err > 10


def test_fps_and_nframes_together_is_an_error():
    with pytest.raises(AssertionError):
        qv.smart_nframes({"fps": 2, "nframes": 4}, total_frames=100, video_fps=30)
    with pytest.raises(MediaError, match="fps"):
        vm.smart_nframes({"fps": 2, "nframes": 4}, 100, 30)
    with pytest.raises(MediaError, match="fps"):
        MediaLoader(MediaConfig()).validate_options(MediaSpec("video", "data:,x", {"fps": 2, "nframes": 4}, "m"))


def test_short_clips():
    # < 4 frames: clamped to the clip, floored to even; 1 frame: upstream raises
    assert vm.smart_nframes({}, 3, 30) == qv.smart_nframes({}, total_frames=3, video_fps=30) == 2
    assert vm.smart_nframes({}, 2, 30) == qv.smart_nframes({}, total_frames=2, video_fps=30) == 2
    with pytest.raises(ValueError):
        qv.smart_nframes({}, total_frames=1, video_fps=30)
    with pytest.raises(MediaError):
        vm.smart_nframes({}, 1, 30)


def test_sample_frame_indices_match_torch_linspace():
    cases = [(t, n) for t in (2, 3, 5, 45, 100, 1800, 2997, 100000) for n in (1, 2, 3, 4, 8, 37, 120, 768) if n <= t]
    cases += [(t, n) for t in range(2, 200, 7) for n in range(2, t + 1, 3)]
    for total, n in cases:
        ref = torch.linspace(0, total - 1, n).round().long().tolist()
        assert vm.sample_frame_indices(total, n) == ref, (total, n)
    for start, end, n in [(15, 300, 24), (1, 2, 2), (30, 1799, 768), (7, 1000, 333), (0, 99999, 768)]:
        ref = torch.linspace(start, end, n).round().long().tolist()
        assert vm.sample_frame_indices(end + 1, n, start, end) == ref


def test_frame_range_matches_qwen():
    for total, fps in [(300, 30), (1800, 29.97002997002997), (10, 2)]:
        for vs, ve in [(None, None), (1.0, None), (None, 3.3), (0.5, 4.25), (0, 1e9), (2.0, 2.1)]:
            opts = {k: v for k, v in (("video_start", vs), ("video_end", ve)) if v is not None}
            try:
                ref = qv.calculate_video_frame_range(opts, total, fps)
            except ValueError:
                with pytest.raises(MediaError):
                    vm.calculate_video_frame_range(opts, total, fps)
                continue
            assert vm.calculate_video_frame_range(opts, total, fps) == ref


class _ShapeOnlyVideo:
    """qwen's fetch_video only reads .shape of the reader's tensor before resizing; we stub the resize."""


@pytest.mark.parametrize("h,w", [(1080, 1920), (720, 1280), (240, 320), (2160, 3840), (100, 3000), (56, 56)])
def test_video_frame_size_rule_matches_qwen(monkeypatch, h, w):
    seen = {}

    def fake_resize(video, size, interpolation=None, antialias=None):
        seen["size"] = tuple(size)
        return torch.zeros(1)

    monkeypatch.setattr(qv.transforms.functional, "resize", fake_resize)
    for n in (2, 4, 16, 120, 300, 768):
        for opts in ({}, {"max_pixels": 200 * F28}, {"min_pixels": 256 * F28}, {"total_pixels": 2000 * F28},
                     {"total_pixels": 20480 * F28, "min_pixels": 64 * F28}, {"resized_height": 300, "resized_width": 500},
                     {"max_pixels": 10 ** 9}):
            video = torch.zeros(1, 3, 1, 1, dtype=torch.uint8).expand(n, 3, h, w)  # no memory

            def reader(ele, video=video):
                return video, {"fps": 30.0}, 2.0

            monkeypatch.setitem(qv.VIDEO_READER_BACKENDS, "stub", reader)
            monkeypatch.setattr(qv, "get_video_reader_backend", lambda: "stub")
            try:
                qv.fetch_video({"video": "stub.mp4", **opts})
            except (ValueError, AssertionError):
                with pytest.raises(MediaError):
                    vm.video_target_size(h, w, n, opts)
                continue
            assert vm.video_target_size(h, w, n, opts) == seen["size"], (h, w, n, opts)


# ----------------------------------------------------------------------------- images, pixels
def _rgba_png():
    rgb = synth.photo_like(300, 200, 5)
    alpha = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (200, 1))
    return synth.encode_image(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")


def _mode_png(mode):
    img = Image.fromarray(synth.photo_like(240, 160, 6))
    if mode == "P":
        img = img.quantize(64)
    elif mode == "PA":
        img = img.quantize(64)
        img.info["transparency"] = 3
    elif mode == "I;16":
        arr = (synth.photo_like(240, 160, 6)[..., 0].astype(np.uint16) * 257)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
    else:
        img = img.convert(mode)
    return synth.encode_image(img, "PNG")


def _cmyk_jpeg():
    return synth.encode_image(Image.fromarray(synth.photo_like(320, 240, 7)).convert("CMYK"), "JPEG")


def _animated_gif():
    frames = [Image.fromarray(synth.photo_like(120, 90, s)).quantize(32) for s in range(3)]
    bio = io.BytesIO()
    frames[0].save(bio, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return bio.getvalue()


IMAGES = {
    "jpeg420": lambda: synth.jpeg(640, 480),
    "jpeg444": lambda: synth.jpeg(500, 333, subsampling=0),
    "jpeg_progressive": lambda: synth.jpeg(640, 480, progressive=True),
    "jpeg_gray": lambda: synth.encode_image(Image.fromarray(synth.photo_like(500, 400)).convert("L"), "JPEG"),
    "jpeg_cmyk": _cmyk_jpeg,
    "jpeg_big": lambda: synth.jpeg(2400, 1800, seed=3),
    "jpeg_odd": lambda: synth.jpeg(1001, 757, seed=4),
    "png_rgba": _rgba_png,
    "png_P": lambda: _mode_png("P"),
    "png_P_transparency": lambda: _mode_png("PA"),
    "png_LA": lambda: _mode_png("LA"),
    "png_L": lambda: _mode_png("L"),
    "png_1bit": lambda: _mode_png("1"),
    "png_I16": lambda: _mode_png("I;16"),
    "webp": lambda: synth.encode_image(synth.photo_like(300, 200), "WEBP"),
    "webp_alpha": lambda: synth.encode_image(Image.open(io.BytesIO(_rgba_png())), "WEBP", lossless=True),
    "gif_animated": _animated_gif,
    "bmp": lambda: synth.encode_image(synth.photo_like(123, 77), "BMP"),
    "tiny_1x1": lambda: synth.encode_image(np.full((1, 1, 3), 200, np.uint8), "PNG"),
    "thin_5x300": lambda: synth.encode_image(synth.photo_like(300, 5), "PNG"),
    "ratio_200": lambda: synth.encode_image(synth.photo_like(2000, 10), "PNG"),
    "edge_31x639": lambda: synth.jpeg(639, 31),
}
IMAGE_OPTS = [{}, {"max_pixels": 256 * F28}, {"min_pixels": 1000 * F28}, {"max_pixels": 64 * F28, "min_pixels": 16 * F28},
              {"resized_height": 280, "resized_width": 420}, {"max_pixels": 20 * F28}]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eqimg")
    out = {}
    for name, make in IMAGES.items():
        data = make()
        p = d / name
        p.write_bytes(data)
        out[name] = (str(p), data)
    return out


def _diff(a, b):
    d = np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16))
    return float(d.mean()), float(np.percentile(d, 99)), int(d.max())


@pytest.mark.parametrize("name", list(IMAGES))
def test_images_match_qwen(image_files, name):
    path, data = image_files[name]
    for opts in IMAGE_OPTS:
        try:
            ref = qv.fetch_image({"image": path, **opts})
        except (ValueError, AssertionError) as e:  # e.g. PIL refusing a 0-sized resize (31x639 case)
            ref = e
        for mode in ("reference", "accurate", "fast"):
            try:
                ours = decode_image(data, opts, max_pixels=10 ** 9, mode=mode)
            except MediaError:
                assert isinstance(ref, Exception), (name, opts, mode)
                continue
            if isinstance(ref, Exception):
                # only where qwen-vl-utils' smart_resize returned a 0 side (we apply the guard)
                assert "max_pixels" in opts and ours.size[1] == 28 or ours.size[0] == 28, (name, opts, ref)
                continue
            assert ours.mode == "RGB" and ours.size == ref.size, (name, opts, mode)
            mean, p99, mx = _diff(ours, ref)
            if mode == "reference":
                assert mx == 0, (name, opts)
            elif mode == "accurate":
                assert mean <= 0.05 and mx <= 2, (name, opts, mean, mx)
            else:
                assert mean <= 0.5 and p99 <= 3, (name, opts, mean, p99)


def test_rgba_white_background_and_palette_conversion(image_files):
    ref = np.asarray(qv.fetch_image({"image": image_files["png_rgba"][0]}))
    assert ref[:, 0].min() >= 250  # alpha 0 column -> white
    ours = np.asarray(decode_image(image_files["png_rgba"][1], {}, max_pixels=10 ** 9))
    assert np.array_equal(ours, ref)


# ----------------------------------------------------------------------------- video, pixels
def _naive_pyav_reader(ele):
    """qwen-vl-utils' torchcodec reader with the decoder swapped for a full PyAV decode of every frame.

    Frame count = frames decoded, fps = frames / pts span (torchcodec exact mode). Checks our
    sampling, per-frame sizing, resize and selective decoding against qwen-vl-utils' own code path.
    """
    with av.open(ele["video"]) as c:
        s = c.streams.video[0]
        frames, pts, end = [], [], 0
        for f in c.decode(s):
            frames.append(f.to_ndarray(format="rgb24"))
            pts.append(f.pts)
            end = max(end, f.pts + (f.duration or 0))
        fps = len(frames) / float((end - min(pts)) * s.time_base)
    total_frames, video_fps = len(frames), fps
    start_frame, end_frame, total_frames = qv.calculate_video_frame_range(ele, total_frames, video_fps)
    nframes = qv.smart_nframes(ele, total_frames=total_frames, video_fps=video_fps)
    idx = torch.linspace(start_frame, end_frame, nframes).round().long().tolist()
    sample_fps = nframes / max(total_frames, 1e-6) * video_fps
    video = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)
    return video, {"fps": video_fps, "frames_indices": idx, "total_num_frames": total_frames}, sample_fps


def _frames(n, w, h, seed=0):
    base = synth.photo_like(w + 64, h + 64, seed)
    return [base[(2 * i) % 64:(2 * i) % 64 + h, (3 * i) % 64:(3 * i) % 64 + w].copy() for i in range(n)]


VIDEOS = {
    "x264_45f_30fps": lambda: synth.encode_video(_frames(45, 320, 240), fps=30, options={"preset": "veryfast"}),
    "x264_ntsc_50f": lambda: synth.encode_video(_frames(50, 256, 144), fps=30000 / 1001,
                                                options={"preset": "veryfast", "g": "12"}),
    "x264_3f": lambda: synth.encode_video(_frames(3, 160, 120), fps=30),
    "x264_2f": lambda: synth.encode_video(_frames(2, 160, 120), fps=30),
    "vp9_webm_40f": lambda: synth.encode_video(_frames(40, 192, 108), fps=25, codec="libvpx-vp9", container="webm",
                                               options={"g": "10", "deadline": "realtime", "cpu-used": "8"}),
    "mpeg4_bframes": lambda: synth.encode_video(_frames(40, 176, 144), fps=24, codec="mpeg4", options={"bf": "2", "g": "9"}),
}
VIDEO_OPTS = [{}, {"fps": 1.0}, {"nframes": 6}, {"fps": 4, "max_frames": 8}, {"max_pixels": 64 * F28},
              {"video_start": 0.3, "video_end": 1.2}, {"resized_height": 112, "resized_width": 168},
              {"min_pixels": 16 * F28, "total_pixels": 256 * F28}]


@pytest.fixture(scope="module")
def video_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eqvid")
    out = {}
    for name, make in VIDEOS.items():
        data = make()
        p = d / (name + (".webm" if "webm" in name else ".mp4"))
        p.write_bytes(data)
        out[name] = (str(p), data)
    return out


@pytest.mark.parametrize("name", list(VIDEOS))
def test_videos_match_qwen(monkeypatch, video_files, name):
    monkeypatch.setitem(qv.VIDEO_READER_BACKENDS, "pyav_naive", _naive_pyav_reader)
    monkeypatch.setattr(qv, "get_video_reader_backend", lambda: "pyav_naive")
    path, data = video_files[name]
    for opts in VIDEO_OPTS:
        try:
            (ref, meta), ref_fps = qv.fetch_video({"video": path, **opts}, return_video_sample_fps=True,
                                                  return_video_metadata=True)
        except Exception:  # noqa: BLE001 - qwen-vl-utils then retries torchvision, gone in 0.28
            with pytest.raises(MediaError):
                decode_video(data, opts)
            continue
        ref = ref.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for mode in ("accurate", "fast"):
            frames, ours = decode_video(data, opts, mode=mode)
            assert frames.shape == ref.shape, (name, opts)
            assert ours["frames_indices"] == meta["frames_indices"], (name, opts)
            assert ours["total_num_frames"] == meta["total_num_frames"]
            assert math.isclose(ours["sample_fps"], ref_fps, rel_tol=1e-9) and math.isclose(ours["fps"], meta["fps"])
            assert math.isclose(_transformers_sampled_fps(ours), ref_fps, rel_tol=1e-9)
            mean, p99, mx = _diff(frames, ref)
            if mode == "accurate":
                assert mx == 0, (name, opts, mean, mx)
            else:
                assert mean <= 0.5 and p99 <= 3, (name, opts, mean, p99)


def _transformers_sampled_fps(meta):
    """What Qwen2.5-VL's processor in transformers (as vLLM calls it) derives second_per_grid_ts from."""
    from transformers.video_utils import VideoMetadata

    keys = ("fps", "frames_indices", "total_num_frames", "duration")
    return VideoMetadata(**{k: meta[k] for k in keys}).sampled_fps


def test_one_frame_clip_is_used_twice():
    data = synth.encode_video(_frames(1, 160, 120), fps=30)
    frames, meta = decode_video(data, {})
    assert frames.shape[0] == 2 and np.array_equal(frames[0], frames[1])
    assert meta["frames_indices"] == [0, 0] and meta["sample_fps"] == 2.0
    assert _transformers_sampled_fps(meta) == 2.0


# ----------------------------------------------------------------------------- frame lists
@pytest.mark.parametrize("n,opts", [(3, {}), (4, {"max_pixels": 200 * F28}), (5, {"min_pixels": 300 * F28}),
                                    (2, {"resized_height": 200, "resized_width": 300})])
async def test_frame_lists_match_qwen(tmp_path, n, opts):
    paths = []
    for i in range(n):
        p = tmp_path / f"f{i}.jpg"
        p.write_bytes(synth.jpeg(400, 300, seed=i))
        paths.append(str(p))
    (ref, meta), ref_fps = qv.fetch_video({"video": paths, **opts}, return_video_sample_fps=True,
                                          return_video_metadata=True)
    ref = ref.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for mode in ("reference", "accurate", "fast"):
        loader = MediaLoader(MediaConfig(allowed_local_roots=[str(tmp_path)], decode_mode=mode))
        [vid] = await loader.load([MediaSpec("video", paths, opts, "m[0]")])
        await loader.aclose()
        assert vid.frames.shape == ref.shape, (n, opts, mode)
        assert vid.metadata["frames_indices"] == meta["frames_indices"]
        assert vid.sample_fps == ref_fps
        assert vid.metadata["fps"] == meta["fps"] and vid.metadata["total_num_frames"] == meta["total_num_frames"]
        assert math.isclose(_transformers_sampled_fps(vid.metadata), ref_fps)
        mean, p99, mx = _diff(vid.frames, ref)
        assert (mx == 0) if mode != "fast" else (mean <= 0.5 and p99 <= 3), (n, opts, mode, mean, mx)


async def test_frame_list_max_pixels_below_video_min_is_refused_like_qwen(tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"f{i}.jpg"
        p.write_bytes(synth.jpeg(400, 300, seed=i))
        paths.append(str(p))
    with pytest.raises(AssertionError):  # video min_pixels 128*28*28 > max_pixels
        qv.fetch_video({"video": paths, "max_pixels": 100 * F28})
    loader = MediaLoader(MediaConfig(allowed_local_roots=[str(tmp_path)]))
    with pytest.raises(MediaError, match=r"^m\[0\]: max_pixels"):
        await loader.load([MediaSpec("video", paths, {"max_pixels": 100 * F28}, "m[0]")])


# ----------------------------------------------------------------------------- selective decoding
SELECTIVE_CODECS = {
    "x264_bframes_pyramid": dict(options={"preset": "veryfast"}),
    "x264_open_gop": dict(options={"preset": "veryfast", "x264-params": "keyint=12:open-gop=1:bframes=3"}),
    "x264_baseline_gop8": dict(options={"preset": "veryfast", "profile": "baseline", "g": "8"}),
    "x265_bframes": dict(codec="libx265", options={"preset": "ultrafast",
                                                    "x265-params": "keyint=15:bframes=3:log-level=error"}),
    "vp9_gop10": dict(codec="libvpx-vp9", container="webm", options={"g": "10", "deadline": "realtime", "cpu-used": "8"}),
    "mpeg4_bframes": dict(codec="mpeg4", options={"bf": "2", "g": "12"}),
    "mjpeg_avi": dict(codec="mjpeg", container="avi", pix_fmt="yuvj420p"),
    "x264_mkv_gop10": dict(container="matroska", options={"preset": "veryfast", "g": "10"}),
}


@pytest.mark.parametrize("name", list(SELECTIVE_CODECS))
def test_selective_decoding_is_bit_identical_to_full_decode(name):
    from serve_app.media import video as V

    kw = SELECTIVE_CODECS[name]
    if kw.get("codec", "libx264") not in av.codecs_available:
        pytest.skip(f"encoder {kw.get('codec')} not in this PyAV build")
    data = synth.encode_video(_frames(60, 160, 120, seed=2), fps=30, **kw)
    with av.open(io.BytesIO(data)) as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    c = V.open_container(data)
    idx = V.index_stream(c, V.VideoLimits())
    c.close()
    assert idx.num_frames == len(full) == 60
    for n in (4, 8, 40):
        wanted = sorted(set(vm.sample_frame_indices(60, n)))
        stats = {}
        frames, _ = V.decode_selected(data, idx, wanted, stats=stats)
        assert sorted(frames) == wanted, (name, n)
        for i in wanted:
            assert np.array_equal(frames[i].to_ndarray(format="rgb24"), full[i]), (name, n, i)
        if n == 4 and name != "mjpeg_avi":
            assert stats["frames_decoded"] < 60  # something was skipped
