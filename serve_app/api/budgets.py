"""Budgets a request is held to before any replica fetches or decodes anything (pure).

- **Items per kind** against vLLM's ``engine_kwargs.limit_mm_per_prompt`` (``{image: N, video: M}``):
  vLLM would refuse the prompt only after the preprocessor decoded every item (32 WebPs that declare
  99.99 MP each: 40 s and 5 GB before "at most 4 images"); here it is a 400 at the ingress.
- **Explicit sizes** (``resized_height`` × ``resized_width``) under the same pixel caps as
  ``max_pixels`` (``media.image_max_pixels``; per video frame ``media.video_max_pixels``): they
  otherwise bypass the server's caps (12.8 MP frames).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from serve_app.errors import InvalidRequestError
from serve_app.media.config import MediaConfig
from serve_app.media.spec import MediaSpec


def mm_limits(engine_kwargs: Mapping[str, Any]) -> dict[str, int]:
    """``limit_mm_per_prompt`` as {kind: count}; vLLM 0.32 also accepts {kind: {"count": n, ...}}."""
    raw = engine_kwargs.get("limit_mm_per_prompt") or {}
    out: dict[str, int] = {}
    if isinstance(raw, Mapping):
        for kind, value in raw.items():
            if isinstance(value, Mapping):
                value = value.get("count")
            if isinstance(value, int) and not isinstance(value, bool):
                out[str(kind)] = value
    return out


def check_item_limits(media: Sequence[MediaSpec], engine_kwargs: Mapping[str, Any]) -> None:
    limits = mm_limits(engine_kwargs)
    seen: Counter[str] = Counter()
    for spec in media:
        seen[spec.kind] += 1
        limit = limits.get(spec.kind)
        if limit is not None and seen[spec.kind] > limit:
            total = sum(1 for s in media if s.kind == spec.kind)
            raise InvalidRequestError(
                f"{spec.where}: the request has {total} {spec.kind}s; this server accepts at most {limit} "
                f"{spec.kind}{'' if limit == 1 else 's'} per request", param="messages")


def check_explicit_size(spec: MediaSpec, config: MediaConfig) -> None:
    opts = spec.options or {}
    h, w = opts.get("resized_height"), opts.get("resized_width")
    if h is None or w is None:
        return
    cap = config.image_max_pixels if spec.kind == "image" else config.video_max_pixels
    if h * w > cap:
        what = "an image" if spec.kind == "image" else "a video frame"
        raise InvalidRequestError(
            f"{spec.where}: resized_height x resized_width = {int(h)} x {int(w)} = {int(h * w)} pixels, more than "
            f"this server's cap of {cap} pixels for {what}", param=spec.where)
