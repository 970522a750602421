"""OpenAI's ``image_url.detail`` → a qwen-vl-utils pixel budget (pure).

``auto`` (or no detail) keeps the server's defaults (``media.image_min_pixels`` ..
``media.image_max_pixels``, qwen-vl-utils' own). ``low`` caps the image at
``media.image_detail_low_max_pixels`` (default 256 × 28² = 200,704 pixels: at most 256 visual
tokens, about a 448×448 image), ``high`` at ``media.image_detail_high_max_pixels`` (default: the
model's cap, ``media.image_max_pixels``, 16,384 × 28²). The budget is an upper bound, as
``max_pixels`` is: a smaller image keeps its size (rounded to multiples of 28). A part that also
sets ``max_pixels`` or ``resized_height``/``resized_width`` keeps those: the explicit qwen-vl-utils
option is the more specific one.
"""

from __future__ import annotations

from typing import Any

from serve_app.media.config import MediaConfig


def detail_options(detail: str | None, options: dict[str, Any], media: MediaConfig) -> dict[str, Any]:
    if detail in (None, "auto") or "max_pixels" in options or "resized_height" in options:
        return options
    budget = (media.image_detail_low_max_pixels if detail == "low"
              else media.image_detail_high_max_pixels or media.image_max_pixels)
    budget = max(media.image_min_pixels, min(budget, media.image_max_pixels))
    out = dict(options, max_pixels=budget)
    if out.get("min_pixels", 0) > budget:
        out["min_pixels"] = budget
    return out
