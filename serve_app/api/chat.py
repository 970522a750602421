"""Chat messages → chat-template messages + the media they reference (pure).

The engine renders the model's own chat template over ``template_messages`` (each image or
video becomes ``{"type": "image"}`` / ``{"type": "video"}``, which Qwen2.5-VL's template turns into
``<|vision_start|><|image_pad|><|vision_end|>``); the preprocessor loads ``media`` in the same
order, which is the order vLLM matches placeholders to items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.errors import InvalidRequestError
from serve_app.media.errors import MediaError
from serve_app.media.spec import MediaSpec, check_item_count
from serve_app.api.protocol import (
    ChatMessage,
    ImagePart,
    ImageURLPart,
    TextPart,
    VideoPart,
    VideoURLPart,
)


@dataclass(frozen=True)
class ChatPlan:
    template_messages: list[dict[str, Any]]
    media: list[MediaSpec]


def plan_chat(messages: list[ChatMessage], max_media_items: int | None = None, media_config=None) -> ChatPlan:
    """``media_config``: the server's :class:`MediaConfig`, for ``image_url.detail`` budgets."""
    template: list[dict[str, Any]] = []
    media: list[MediaSpec] = []
    for i, msg in enumerate(messages):
        if msg.content is None:
            template.append({"role": msg.role, "content": ""})
            continue
        if isinstance(msg.content, str):
            template.append({"role": msg.role, "content": msg.content})
            continue
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(msg.content):
            where = f"messages[{i}].content[{j}]"
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            elif isinstance(part, (ImageURLPart, ImagePart)):
                source = part.image_url.url if isinstance(part, ImageURLPart) else part.image
                options = part.media_options()
                if isinstance(part, ImageURLPart) and part.image_url.detail not in (None, "auto"):
                    from serve_app.media.config import MediaConfig
                    from serve_app.media.detail import detail_options

                    options = detail_options(part.image_url.detail, options, media_config or MediaConfig())
                media.append(MediaSpec(kind="image", source=source, options=options, where=where))
                parts.append({"type": "image"})
            elif isinstance(part, (VideoURLPart, VideoPart)):
                source = part.video_url.url if isinstance(part, VideoURLPart) else part.video
                media.append(MediaSpec(kind="video", source=source, options=part.media_options(), where=where))
                parts.append({"type": "video"})
            else:  # pragma: no cover - the discriminated union admits nothing else
                raise InvalidRequestError(f"{where}: unsupported content part", param=where)
        template.append({"role": msg.role, "content": parts})
    if max_media_items is not None:
        try:
            check_item_count(media, max_media_items)
        except MediaError as exc:
            raise InvalidRequestError(str(exc), param="messages") from None
    return ChatPlan(template_messages=template, media=media)
