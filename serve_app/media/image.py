"""Image bytes -> RGB PIL image resized exactly as qwen-vl-utils 0.0.14 ``fetch_image`` does.

Reference pipeline (``exact``): ``Image.open`` -> ``to_rgb`` (RGBA pasted on white with its alpha
as mask; every other mode ``convert("RGB")``: palette, L, LA, CMYK, I;16, ...) -> ``resize`` with
Pillow's default filter for RGB (BICUBIC, antialiased) to ``smart_resize``'s size. The source
size is read from the header and checked against ``max_image_pixels`` before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import vision_math as vm
from .errors import MediaError, MediaTooLarge
from .resize import resize_backend, resize_rgb, resizing

# Magic numbers of the formats we accept as images.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
# Pillow plugins we let parse untrusted bytes (no EPS/PSD/FITS/...: less attack surface).
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")


def sniff_image_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


def describe_non_image(data: bytes, content_type: str | None) -> str:
    if not data:
        return "image data is empty (0 bytes)"
    hint = f" (served as {content_type})" if content_type else ""
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return f"content is an HTML page, not an image{hint}"
    if head.startswith((b"{", b"[")):
        return f"content is JSON/text, not an image{hint}"
    if data[4:8] == b"ftyp":
        return f"content is a video (MP4/MOV), not an image{hint}"
    return f"content is not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF){hint}"


def open_image(data: bytes, *, max_pixels: int, content_type: str | None = None) -> Image.Image:
    """Open (header only) and check the size; no pixel data is decoded yet."""
    fmt = sniff_image_format(data)
    if fmt is None:
        raise MediaError(describe_non_image(data, content_type))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise MediaTooLarge(f"image has more pixels than the limit of {max_pixels} ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, KeyError, IndexError, struct.error,
            EOFError) as e:
        raise MediaError(f"cannot read {fmt} image header: corrupt or truncated ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise MediaError(f"{fmt} image has an invalid size {w}x{h}")
    if w * h > max_pixels:
        raise MediaTooLarge(f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
    return img


def _open_sized(data: bytes, options: Mapping[str, Any], *, max_pixels: int, min_target_pixels: int,
                max_target_pixels: int, content_type: str | None, factor: int) -> tuple[Image.Image, tuple[int, int]]:
    img = open_image(data, max_pixels=max_pixels, content_type=content_type)
    w, h = img.size
    return img, vm.image_target_size(h, w, options, min_pixels=min_target_pixels, max_pixels=max_target_pixels,
                                     factor=factor)


def image_target(data: bytes, options: Mapping[str, Any], *, max_pixels: int,
                 min_target_pixels: int = vm.MIN_PIXELS, max_target_pixels: int = vm.MAX_PIXELS,
                 content_type: str | None = None, factor: int = vm.IMAGE_FACTOR) -> tuple[int, int]:
    """(height, width) :func:`decode_image` will produce, from the header alone (the source size
    checked against ``max_pixels`` as there); no pixel is decoded."""
    return _open_sized(data, options, max_pixels=max_pixels, min_target_pixels=min_target_pixels,
                       max_target_pixels=max_target_pixels, content_type=content_type, factor=factor)[1]


def to_rgb(img: Image.Image) -> Image.Image:
    """qwen-vl-utils ``to_rgb``: RGBA composited on white, everything else ``convert("RGB")``."""
    if img.mode == "RGBA":
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.split()[3])
        return bg
    return img.convert("RGB")


def decode_image(data: bytes, options: Mapping[str, Any], *, max_pixels: int,
                 min_target_pixels: int = vm.MIN_PIXELS, max_target_pixels: int = vm.MAX_PIXELS,
                 content_type: str | None = None, mode: str = "fast", margin: float = 1.7,
                 factor: int = vm.IMAGE_FACTOR, output: str = "pil") -> Image.Image | np.ndarray:
    """Decode + convert + resize; raises MediaError with the reason on any bad input.

    ``mode`` is MediaConfig.decode_mode: "reference" runs the literal Pillow calls of qwen-vl-utils;
    "accurate" uses simplejpeg for JPEGs and torch's resampler; "fast" adds reduced-scale JPEG
    decoding and OpenCV for large near-identity resizes. ``output="any"`` may return a uint8
    [H, W, 3] array instead of a PIL image (whichever the decoder produced; no conversion).
    """
    accelerate, fast = mode != "reference", mode == "fast"
    img, (th, tw) = _open_sized(data, options, max_pixels=max_pixels, min_target_pixels=min_target_pixels,
                                max_target_pixels=max_target_pixels, content_type=content_type, factor=factor)
    w, h = img.size
    if img.format == "JPEG" and accelerate:
        from .image_fast import decode_jpeg_resized
        out = decode_jpeg_resized(data, img, (tw, th), fast=fast, margin=margin)
        if out is not None:
            if output == "pil" and isinstance(out, np.ndarray):
                return Image.fromarray(out, "RGB")
            return out
    try:
        rgb = to_rgb(img)
        if not accelerate or resize_backend((w, h), (tw, th), mode) == "pil":
            with resizing():
                return rgb.resize((tw, th))  # the literal qwen-vl-utils call
        arr = resize_rgb(np.array(rgb), (tw, th), mode)
        return arr if output == "any" else Image.fromarray(arr, "RGB")
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, struct.error, zlib.error) as e:
        raise MediaError(f"cannot decode {img.format} image: corrupt or truncated ({e})") from None
    except Image.DecompressionBombError as e:  # pragma: no cover - checked above
        raise MediaTooLarge(str(e)) from None
