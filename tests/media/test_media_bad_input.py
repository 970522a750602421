"""Hostile and broken media: each item decodes correctly or raises MediaError naming the content
part and the reason, quickly. The corpus is generated here."""

from __future__ import annotations

import base64
import re
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from serve_app.dev import synth_media as synth
from serve_app.media import LoadedImage, LoadedVideo, MediaConfig, MediaError, MediaLoader, MediaSpec
from serve_app.media.tuning import library_threads  # noqa: E402


@pytest.fixture(autouse=True)
def _one_library_thread():
    """MediaLoader sets torch/OpenCV to 1 thread (MediaConfig.library_threads); restore afterwards so
    other test modules in this process keep their settings."""
    with library_threads(1):
        yield


WHERE = "messages[1].content[2]"


def uri(data: bytes, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_header(w: int, h: int) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def jpeg_header(w: int, h: int) -> bytes:
    data = bytearray(synth.jpeg(64, 48))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def gif_header(w: int, h: int) -> bytes:
    data = bytearray(synth.encode_image(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def webp_header(w: int, h: int) -> bytes:
    data = bytearray(synth.encode_image(synth.photo_like(64, 48), "WEBP"))
    assert data[12:16] == b"VP8 "
    data[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    return bytes(data)


def corrupt(data: bytes, start_frac: float = 0.3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    b = bytearray(data)
    s = int(len(b) * start_frac)
    b[s:] = rng.integers(0, 256, len(b) - s, dtype=np.uint8).tobytes()
    return bytes(b)


def small(fmt, **kw):
    return synth.encode_image(synth.photo_like(96, 64, 3), fmt, **kw)


def anim_gif():
    frames = [Image.fromarray(synth.photo_like(40, 30, s)).quantize(16) for s in range(4)]
    bio = io.BytesIO()
    frames[0].save(bio, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return bio.getvalue()


def clip(n=20, **kw):
    base = synth.photo_like(128, 96, 1)
    return synth.encode_video((np.roll(base, i, axis=1) for i in range(n)), fps=10, **kw)


JPEG, PNG, WEBP, GIF = small("JPEG"), small("PNG"), small("WEBP"), small("GIF")
MP4 = clip()

BAD_IMAGES = {
    "zero bytes": (b"", "empty"),
    "jpeg truncated": (JPEG[: len(JPEG) // 2], "truncated|corrupt"),
    "jpeg soi only": (b"\xff\xd8\xff", "corrupt|truncated"),
    "jpeg corrupt": (corrupt(JPEG, 0.05), "corrupt|truncated"),
    "png truncated": (PNG[: len(PNG) // 2], "truncated|corrupt"),
    "png corrupt": (corrupt(PNG, 0.2), "corrupt|truncated"),
    "png bad crc": (PNG[:30] + bytes([PNG[30] ^ 0xFF]) + PNG[31:], "corrupt|truncated"),
    "webp truncated": (WEBP[: len(WEBP) // 2], "truncated|corrupt"),
    "webp corrupt": (WEBP[:20] + corrupt(WEBP[20:], 0.0), "corrupt|truncated"),
    "gif truncated": (GIF[:40], "truncated|corrupt"),
    "gif corrupt": (corrupt(GIF, 0.1), "corrupt|truncated"),
    "html": (b"<!doctype html><html><body>403 Forbidden</body></html>", "HTML page, not an image"),
    "json": (b'{"error": "not found"}', "JSON/text, not an image"),
    "plain text": (b"hello world, this is not a picture", "not a supported image"),
    "mp4 as image": (MP4, "video \\(MP4/MOV\\), not an image"),
    "png 50000x50000 header": (png_header(50000, 50000), "more pixels than the limit"),
    "jpeg 50000x50000 header": (jpeg_header(50000, 50000), "more pixels than the limit"),
    "gif 50000x50000 header": (gif_header(50000, 50000), "more pixels than the limit"),
    "webp 16383x16383 header": (webp_header(16383, 16383), "more pixels than the limit"),
    "png 12000x9000 header": (png_header(12000, 9000), "12000x9000 = 108000000 pixels, more than the limit"),
    "png 200000x1 header": (png_header(200000, 1), "more than the limit|aspect ratio"),
}


@pytest.fixture
async def loader():
    ld = MediaLoader(MediaConfig())
    ld.warmup()
    yield ld
    await ld.aclose()


@pytest.mark.parametrize("name", list(BAD_IMAGES))
async def test_bad_images_raise_media_error_fast(loader, name):
    data, reason = BAD_IMAGES[name]
    t = time.monotonic()
    with pytest.raises(MediaError, match=rf"^messages\[1\]\.content\[2\]: .*({reason})") as ei:
        await loader.load([MediaSpec("image", uri(data), {}, WHERE)])
    assert time.monotonic() - t < 2, name
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("name,data", [
    ("1x1 png", synth.encode_image(np.full((1, 1, 3), 7, np.uint8), "PNG")),
    ("1x1 jpeg", synth.encode_image(np.full((1, 1, 3), 7, np.uint8), "JPEG")),
    ("1x1 gif", synth.encode_image(Image.new("P", (1, 1)), "GIF")),
    ("1x1 webp", synth.encode_image(np.full((1, 1, 3), 7, np.uint8), "WEBP")),
    ("animated gif", anim_gif()),
    ("jpeg with trailing garbage", JPEG + b"garbage" * 10),
    ("cmyk jpeg", synth.encode_image(Image.fromarray(synth.photo_like(64, 48)).convert("CMYK"), "JPEG")),
    ("16-bit png", synth.encode_image(Image.fromarray((synth.photo_like(64, 48)[..., 0].astype(np.uint16) * 257)), "PNG")),
])
async def test_odd_but_valid_images_decode(loader, name, data):
    [r] = await loader.load([MediaSpec("image", uri(data), {}, WHERE)])
    assert isinstance(r, LoadedImage) and r.image.mode == "RGB"
    w, h = r.image.size
    assert w % 28 == 0 and h % 28 == 0 and w * h >= 4 * 28 * 28
    if name.startswith("1x1"):
        assert r.image.size == (56, 56)


def _truncated_faststart():
    data = clip(40, options={"preset": "veryfast", "movflags": "+faststart"})
    return data[: int(len(data) * 0.6)]


BAD_VIDEOS = {
    "zero bytes": (b"", "empty"),
    "random bytes": (np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "cannot read video"),
    "mp4 header then garbage": (MP4[:64] + corrupt(MP4[64:], 0.0), "cannot read video|no frames|corrupt"),
    "mp4 truncated (no moov)": (MP4[: len(MP4) // 2], "cannot read video|corrupt|no video"),
    "audio-only mp4": (synth.audio_only_mp4(), "no video stream \\(streams: audio\\)"),
    "jpeg as video": (JPEG, "not a supported container"),
    "png as video": (PNG, "not a supported container"),
    "ffconcat list": (b"ffconcat version 1.0\nfile /etc/hostname\n", "not a supported container"),
    "hls playlist": (b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nhttp://127.0.0.1:9/seg.ts\n#EXT-X-ENDLIST\n",
                     "not a supported container"),
    "text as video": (b"this is not a video at all" * 10, "cannot read video"),
}


@pytest.mark.parametrize("name", list(BAD_VIDEOS))
async def test_bad_videos_raise_media_error_fast(loader, name):
    data, reason = BAD_VIDEOS[name]
    t = time.monotonic()
    with pytest.raises(MediaError, match=rf"^messages\[1\]\.content\[2\]: .*({reason})"):
        await loader.load([MediaSpec("video", uri(data, "video/mp4"), {}, WHERE)])
    assert time.monotonic() - t < 2, name


async def test_truncated_faststart_mp4_decodes_what_is_there_or_refuses(loader):
    try:
        [v] = await loader.load([MediaSpec("video", uri(_truncated_faststart(), "video/mp4"), {}, WHERE)])
    except MediaError as e:
        assert str(e).startswith(WHERE + ": ")
    else:
        assert v.frames.shape[0] % 2 == 0 and v.frames.dtype == np.uint8


async def test_one_frame_clip(loader):
    [v] = await loader.load([MediaSpec("video", uri(clip(1)), {}, WHERE)])
    assert isinstance(v, LoadedVideo) and v.frames.shape[0] == 2
    assert v.metadata["frames_indices"] == [0, 0] and v.sample_fps == 2.0


async def test_video_limits():
    data = clip(40)  # 4 s at 10 fps, 128x96
    spec = MediaSpec("video", uri(data), {}, WHERE)
    cases = [(MediaConfig(max_video_duration_s=2), "4.0s long, more than the limit of 2s"),
             (MediaConfig(max_video_source_frames=30), "more than 30 frames"),
             (MediaConfig(max_video_frame_pixels=5000), "more than the limit of 5000"),
             (MediaConfig(max_video_bytes=1000), "limit of 1000 bytes")]
    for cfg, msg in cases:
        ld = MediaLoader(cfg)
        with pytest.raises(MediaError, match=rf"^messages\[1\]\.content\[2\]: .*{msg}"):
            await ld.load([spec])
    ld = MediaLoader(MediaConfig(max_video_frames=4))
    with pytest.raises(MediaError, match="nframes must be between 2 and 4"):
        await ld.load([MediaSpec("video", uri(data), {"nframes": 8}, WHERE)])
    with pytest.raises(MediaError, match="8 frames would be sampled, more than the limit of 4"):
        await ld.load([MediaSpec("video", uri(data), {"fps": 2}, WHERE)])
    with pytest.raises(MediaError, match="10 frames given, more than the limit of 4"):
        await ld.load([MediaSpec("video", [uri(JPEG)] * 10, {}, WHERE)])


async def test_limits_on_items_and_pixels():
    ld = MediaLoader(MediaConfig(max_items_per_request=2))
    specs = [MediaSpec("image", uri(JPEG), {}, f"messages[0].content[{i}]") for i in range(3)]
    with pytest.raises(MediaError, match=r"^messages\[0\]\.content\[2\]: the request has 3 media items, more than the limit of 2"):
        await ld.load(specs)
    ld = MediaLoader(MediaConfig(max_image_pixels=96 * 64 - 1))
    with pytest.raises(MediaError, match="96x64 = 6144 pixels, more than the limit of 6143"):
        await ld.load([MediaSpec("image", uri(JPEG), {}, WHERE)])


@pytest.mark.parametrize("kind,opts,msg", [
    ("image", {"fps": 2}, "unknown image option"),
    ("image", {"max_pixels": "big"}, "must be a number"),
    ("image", {"max_pixels": -5}, "must be > 0"),
    ("image", {"max_pixels": float("nan")}, "must be a number"),
    ("image", {"max_pixels": True}, "must be a number"),
    ("image", {"resized_height": 100}, "given together"),
    ("image", {"resized_height": 10.5, "resized_width": 10}, "integer"),
    ("image", {"min_pixels": 5000, "max_pixels": 4000}, "max_pixels \\(4000\\) must be >= min_pixels"),
    ("image", {"max_pixels": 10 ** 12}, "must be <="),
    ("video", {"fps": 2, "nframes": 4}, "only one of fps and nframes"),
    ("video", {"nframes": 1}, "nframes must be between"),
    ("video", {"video_start": 5, "video_end": 2}, "before video_end"),
    ("video", {"video_start": -1}, ">= 0"),
    ("video", {"fps": 1000}, "fps must be <="),
    ("video", {"colour": 1}, "unknown video option"),
])
def test_invalid_options_refused_without_io(kind, opts, msg):
    ld = MediaLoader(MediaConfig())
    with pytest.raises(MediaError, match="^" + re.escape(WHERE) + ": .*" + msg):
        ld.validate_options(MediaSpec(kind, "http://example.invalid/x", opts, WHERE))


def test_bad_sources_refused_without_io():
    ld = MediaLoader(MediaConfig())
    for src, msg in [("", "non-empty"), ("   ", "non-empty"), ("ftp://x/y", "scheme"), ("/tmp/a.png", "not allowed"),
                     (["data:,x"], "only accepted for video")]:
        with pytest.raises(MediaError, match=msg):
            ld.validate_options(MediaSpec("image", src, {}, WHERE))
    with pytest.raises(MediaError, match="empty"):
        ld.validate_options(MediaSpec("video", [], {}, WHERE))
    with pytest.raises(MediaError, match="unknown media kind"):
        ld.validate_options(MediaSpec("audio", "data:,x", {}, WHERE))


async def test_frame_list_with_a_bad_frame_names_the_frame(loader):
    with pytest.raises(MediaError, match=r"^messages\[1\]\.content\[2\]: frame 1: .*empty"):
        await loader.load([MediaSpec("video", [uri(JPEG), uri(b"")], {}, WHERE)])
    other = synth.encode_image(synth.photo_like(300, 40), "PNG")
    with pytest.raises(MediaError, match=r"^messages\[1\]\.content\[2\]: frame 1: all frames .* same size"):
        await loader.load([MediaSpec("video", [uri(JPEG), uri(other)], {}, WHERE)])
    ld = MediaLoader(MediaConfig(max_video_bytes=len(JPEG) * 2))
    with pytest.raises(MediaError, match="frames are larger than the limit"):
        await ld.load([MediaSpec("video", [uri(JPEG)] * 3, {}, WHERE)])


async def test_decode_work_is_bounded_before_any_decode(monkeypatch):
    """Frames the decoder must produce x frame size, from the container index: over the budget is a
    400 before a single frame is decoded (an animated GIF, decoded sequentially, and an MP4)."""
    from serve_app.media import video as video_mod

    decoded = []
    monkeypatch.setattr(video_mod, "decode_sequential", lambda *a, **k: decoded.append(1))
    monkeypatch.setattr(video_mod, "decode_selected", lambda *a, **k: decoded.append(1))
    frames = [Image.fromarray(synth.photo_like(128, 96, seed=i)) for i in range(40)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    for data in (buf.getvalue(), clip(40)):
        ld = MediaLoader(MediaConfig(max_video_decode_pixels=10 * 128 * 96))
        with pytest.raises(MediaError, match=r"means decoding .* source pixels, more than the limit"):
            await ld.load([MediaSpec("video", uri(data), {"nframes": 8}, WHERE)])
    assert decoded == []
