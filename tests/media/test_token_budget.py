"""The media token budget: items are fetched and their headers read, the request is refused when what
they would become passes the context, and only then anything is decoded."""

from __future__ import annotations

import base64
import struct
import time

import numpy as np
import pytest

from serve_app.dev import synth_media as synth
from serve_app.media import MediaConfig, MediaError, MediaLoader, MediaSpec
from serve_app.media import loader as loader_mod
from serve_app.media import vision_math as vm
from serve_app.media.errors import MediaTooLarge
from serve_app.media.token_budget import TokenBudget, token_floor
from serve_app.media.tuning import library_threads


@pytest.fixture(autouse=True)
def _one_library_thread():
    with library_threads(1):
        yield


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def webp_declaring(w: int, h: int) -> bytes:
    """A small WebP whose header declares w x h (its pixel data is a 64 x 48 image's)."""
    data = bytearray(synth.encode_image(synth.photo_like(64, 48), "WEBP"))
    data[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    return bytes(data)


CFG = MediaConfig(image_max_pixels=1003520)  # configs/local.yaml's cap: at most 1280 tokens an image
HUGE = uri(webp_declaring(16383, 6103), "image/webp")  # 99.99 MP, under max_image_pixels
LOCAL = TokenBudget(context=4096, output=16, text=10)


async def _load(cfg, specs, budget):
    ld = MediaLoader(cfg)
    try:
        return await ld.load(specs, budget)
    finally:
        await ld.aclose()


async def test_four_images_declaring_99_mp_are_refused_before_any_decode(monkeypatch):
    decoded = []
    monkeypatch.setattr(loader_mod, "decode_image", lambda *a, **k: decoded.append(1))
    specs = [MediaSpec("image", HUGE, {}, f"messages[0].content[{i}]") for i in range(4)]
    t = time.monotonic()
    with pytest.raises(MediaTooLarge, match=r"^messages\[0\]\.content\[3\]: the request's images and videos up to "
                                            r"this one would take 4872 tokens \(this one 1218\), more than the 4070 "
                                            r"tokens left .* context of 4096 \(the text takes at least 10, the answer 16"):
        await _load(CFG, specs, LOCAL)
    assert decoded == [] and time.monotonic() - t < 5


async def test_within_the_budget_the_plan_is_what_the_engine_counts():
    png = uri(synth.encode_image(synth.photo_like(300, 200), "PNG"))
    frames = [uri(synth.encode_image(synth.photo_like(84, 56, i), "PNG")) for i in range(3)]
    clip = uri(synth.video(160, 112, 40, fps=10), "video/mp4")
    specs = [MediaSpec("image", png, {}), MediaSpec("video", frames, {}), MediaSpec("video", clip, {})]
    ld = MediaLoader(CFG)
    try:
        plans = await ld._each(specs, ld._plan)
        out = await ld.load(specs, LOCAL)
    finally:
        await ld.aclose()
    h, w = vm.image_target_size(200, 300, {})
    _, (fh, fw) = vm.frame_list_sizes(56, 84, 4, {})
    vh, vw = vm.video_target_size(112, 160, 8, {})
    expected = [vm.image_tokens(h, w), vm.video_tokens(4, fh, fw), vm.video_tokens(8, vh, vw)]
    assert [p.tokens for p in plans] == expected
    assert [loader_mod._tokens_of(r) for r in out] == expected
    tight = TokenBudget(context=sum(expected) + 26 - 1, output=16, text=10)
    with pytest.raises(MediaError, match=r"content\[0\]|media: the request's images and videos up to this one would"):
        await _load(CFG, specs, tight)


async def test_a_long_video_is_refused_from_its_index():
    clip = uri(synth.video(320, 224, 120, fps=30), "video/mp4")  # 4 s → 8 frames at 2 fps
    spec = MediaSpec("video", clip, {"fps": 30}, "messages[0].content[0]")  # all 120 frames
    with pytest.raises(MediaTooLarge, match=r"would take \d+ tokens"):
        await _load(CFG, [spec], LOCAL)


async def test_cached_items_count_too():
    png = uri(synth.encode_image(synth.photo_like(600, 400), "PNG"))
    ld = MediaLoader(CFG)
    try:
        [img] = await ld.load([MediaSpec("image", png, {})], LOCAL)
        n = loader_mod._tokens_of(img)
        with pytest.raises(MediaTooLarge):
            await ld.load([MediaSpec("image", png, {})], TokenBudget(context=n + 25, output=16, text=10))
    finally:
        await ld.aclose()


def test_floors_from_options_alone():
    png = "data:image/png;base64,AAAA"
    assert token_floor(MediaSpec("image", png, {}), CFG) == 1
    assert token_floor(MediaSpec("image", png, {"resized_height": 1000, "resized_width": 1000}), CFG) == 36 * 36
    assert token_floor(MediaSpec("video", [png] * 768, {"resized_height": 280, "resized_width": 280}), CFG) == 384 * 100
    assert token_floor(MediaSpec("video", [png] * 3, {}), CFG) == 2
    assert token_floor(MediaSpec("video", "http://x/v.mp4", {"nframes": 64}), CFG) == 32
    assert token_floor(MediaSpec("video", "http://x/v.mp4", {}), CFG) == 1


def test_token_counts_match_the_processor_grid():
    """image_grid_thw / video_grid_thw of Qwen2.5-VL's processor over 4 (the 2 x 2 merge)."""
    assert vm.image_tokens(28, 28) == 1 and vm.image_tokens(1008, 756) == 36 * 27
    assert vm.video_tokens(8, 112, 168) == 4 * 4 * 6
    assert np.prod([1, 4, 6]) // 1 == vm.image_tokens(4 * 28, 6 * 28)
