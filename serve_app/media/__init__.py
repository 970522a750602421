"""Media preprocessing for Qwen2.5-VL: fetch (safely), decode, sample and resize images and videos
exactly as qwen-vl-utils 0.0.14 does. Pure code: no Ray, no vLLM.

Public API: MediaConfig, MediaError, MediaSpec, validate_spec, LoadedImage, LoadedVideo, MediaLoader, and the
resize/sampling math in ``serve_app.media.vision_math``.
"""

from .config import MediaConfig
from .errors import MediaError
from .loader import LoadedImage, LoadedVideo, MediaLoader
from .spec import MediaSpec, validate_spec
from .vision_math import sample_frame_indices, smart_nframes, smart_resize, video_frame_max_pixels

__all__ = [
    "MediaConfig", "MediaError", "MediaSpec", "LoadedImage", "LoadedVideo", "MediaLoader", "validate_spec",
    "smart_resize", "smart_nframes", "sample_frame_indices", "video_frame_max_pixels",
]
