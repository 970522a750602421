"""What the preprocessor hands the engine through Ray's object store (pure).

Media travel as numpy arrays (uint8, HWC / THWC): Ray serialises them out-of-band, so an engine
replica reads pixels from the object store without a copy through the ingress. The prompt text is
not here: the engine renders every prompt (:class:`~serve_app.engine.contract.EngineRequest`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


# The video metadata keys vLLM 0.26-0.32 hand to transformers' VideoMetadata; anything else the
# loader records (source fps, backend details) would make its constructor fail.
ENGINE_VIDEO_METADATA_KEYS = ("fps", "frames_indices", "total_num_frames", "duration")


def engine_video_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: metadata[k] for k in ENGINE_VIDEO_METADATA_KEYS if k in metadata}


@dataclass
class PreparedMedia:
    images: list[np.ndarray] = field(default_factory=list)
    image_uuids: list[str] = field(default_factory=list)
    videos: list[tuple[np.ndarray, dict[str, Any]]] = field(default_factory=list)
    video_uuids: list[str] = field(default_factory=list)
    ready_at: float | None = None  # time.time() when the preprocessor finished (the engine_queue metric)

    def vllm_inputs(self) -> dict[str, Any]:
        """The media fields of a vLLM ``TextPrompt`` dict."""
        mm: dict[str, Any] = {}
        uuids: dict[str, Any] = {}
        if self.images:
            mm["image"] = self.images
            uuids["image"] = self.image_uuids
        if self.videos:
            mm["video"] = self.videos
            uuids["video"] = self.video_uuids
        return {"multi_modal_data": mm, "multi_modal_uuids": uuids} if mm else {}
