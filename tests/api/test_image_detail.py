"""image_url.detail: 'low' and 'high' are pixel budgets from the media config, 'auto' is today's
default; proven by the tokens each image becomes (the preprocessor's real resize)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serve_app.api.chat import plan_chat
from serve_app.media import MediaConfig, MediaLoader
from serve_app.media import vision_math as vm
from serve_app.media.tuning import library_threads
from serve_app.api.protocol import ChatCompletionRequest

LOW_DEFAULT = 256 * 28 * 28


@pytest.fixture(autouse=True)
def _one_library_thread():
    with library_threads(1):
        yield


def png(width: int, height: int) -> str:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plan(detail, media=None, **opts):
    image_url = {"url": png(56, 56)} if detail is None else {"url": png(56, 56), "detail": detail}
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": image_url, **opts}]}]})
    return plan_chat(req.messages, None, media or MediaConfig())


def test_detail_maps_to_pixel_budgets():
    assert plan(None).media[0].options == {}
    assert plan("auto").media[0].options == {}
    assert plan("low").media[0].options == {"max_pixels": LOW_DEFAULT}
    assert plan("high").media[0].options == {"max_pixels": vm.MAX_PIXELS}
    media = MediaConfig(image_max_pixels=1280 * 28 * 28, image_detail_low_max_pixels=64 * 28 * 28)
    assert plan("low", media).media[0].options == {"max_pixels": 64 * 28 * 28}
    assert plan("high", media).media[0].options == {"max_pixels": 1280 * 28 * 28}  # the server's cap
    # The explicit qwen-vl-utils option is more specific than detail.
    assert plan("low", max_pixels=1000 * 28 * 28).media[0].options == {"max_pixels": 1000 * 28 * 28}
    assert plan("low", min_pixels=512 * 28 * 28).media[0].options == {"min_pixels": LOW_DEFAULT,
                                                                      "max_pixels": LOW_DEFAULT}


def test_detail_budgets_are_validated():
    with pytest.raises(ValueError, match="image_detail_low_max_pixels"):
        MediaConfig(image_max_pixels=1000, image_min_pixels=784, image_detail_low_max_pixels=2000)
    MediaConfig(image_max_pixels=100_000)  # the low default is clamped, not an error


@pytest.mark.parametrize("detail, media_kwargs, tokens", [
    (None, {}, 40 * 40),  # 1120² fits the default cap: full resolution
    ("auto", {}, 40 * 40),
    ("high", {}, 40 * 40),
    ("low", {}, 16 * 16),  # at most 256 tokens
    ("low", {"image_detail_low_max_pixels": 64 * 28 * 28}, 8 * 8),
    ("high", {"image_detail_high_max_pixels": 400 * 28 * 28}, 20 * 20),
    ("auto", {"image_detail_high_max_pixels": 400 * 28 * 28}, 40 * 40),
])
async def test_detail_token_counts(detail, media_kwargs, tokens):
    media = MediaConfig(**media_kwargs)
    p = plan(detail, media)
    spec = p.media[0]
    spec = type(spec)(kind=spec.kind, source=png(1120, 1120), options=spec.options, where=spec.where)
    loader = MediaLoader(media)
    try:
        [img] = await loader.load([spec])
    finally:
        await loader.aclose()
    h, w = img.array.shape[:2]
    assert (h // 28) * (w // 28) == tokens
