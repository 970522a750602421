"""Chat messages → chat-template messages + the media they reference (pure).

The preprocessor renders the model's own chat template over ``template_messages`` (each image or
video becomes ``{"type": "image"}`` / ``{"type": "video"}``, which Qwen2.5-VL's template turns into
``<|vision_start|><|image_pad|><|vision_end|>``) and loads ``media`` in the same order, which is
the order vLLM matches placeholders to items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.errors import InvalidRequestError
from serve_app.media.loader import MediaSpec
from serve_app.protocol import (
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

    @property
    def num_images(self) -> int:
        return sum(1 for m in self.media if m.kind == "image")

    @property
    def num_videos(self) -> int:
        return sum(1 for m in self.media if m.kind == "video")


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
                if isinstance(source, list) and not source:
                    raise InvalidRequestError(f"{where}: a video frame list must not be empty", param=where)
                media.append(MediaSpec(kind="video", source=source, options=part.media_options(), where=where))
                parts.append({"type": "video"})
            else:  # pragma: no cover - the discriminated union admits nothing else
                raise InvalidRequestError(f"{where}: unsupported content part", param=where)
        template.append({"role": msg.role, "content": parts})
    if max_media_items is not None and len(media) > max_media_items:
        raise InvalidRequestError(
            f"the request has {len(media)} images/videos; this server accepts at most {max_media_items} per request",
            param="messages",
        )
    return ChatPlan(template_messages=template, media=media)
