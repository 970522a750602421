"""Workloads: request bodies generated (and serialized) before any timing starts.

Every request is unique (its own text, its own images / video), and request *k* of a workload is
byte-identical for both servers, so neither server's caches (vLLM's multimodal processor cache and
prefix cache, the app's media cache) can make one side's work smaller than the other's. Media files
are written once under ``<workdir>/assets`` (reused by every phase; the URL variants serve them from
a local static HTTP server) and base64-encoded into data URIs once, before the clock starts.

Workloads (``max_tokens`` fixed, ``ignore_eos`` so random weights do not change the work):

==============  ===========================================================  ==========
name            content                                                      max_tokens
==============  ===========================================================  ==========
text            ~512 prompt tokens of varied text                            128
image           2 x 1920x1080 JPEG (data URIs) + ~128 text tokens            128
image-url       the same shape, images as http://127.0.0.1 URLs              128
video           one 4 s 640x360 30 fps H.264 MP4 (data URI) + ~64 tokens     64
video-url       the same, as an http://127.0.0.1 URL                         64
multiturn       users of 8 turns each; turn t = the text history of turns    64
                < t + the images t..t+4 of the user's 2400x1080 JPEGs
                (a sliding window of 5, so 4 of 5 recur from the previous
                turn) + ~64 tokens: where media and prefix caches pay
==============  ===========================================================  ==========

``multiturn`` is the one workload whose requests repeat content on purpose: across the turns of one
user (never across users), identically for both servers.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORDS = (
    "image picture video frame camera street city river mountain forest garden window kitchen table "
    "chair bottle glasses keyboard monitor bicycle airplane umbrella backpack flower tree grass sand "
    "snow cloud rain storm red orange yellow green blue purple black white gray brown pink silver gold "
    "horse sheep goat rabbit mouse tiger lion zebra giraffe elephant monkey penguin eagle cat dog "
    "running jumping reading writing cooking driving swimming flying holding pointing smiling standing "
    "sitting looking walking talking playing working sleeping eating drinking morning evening night "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June "
    "July August September October November December the a of and to in on with for at by from "
    "describe count explain summarize compare translate list answer question document chart revenue "
    "quarter year weather sunny breeze degrees train station clock person road waves lake sunrise "
    "0 1 2 3 4 5 6 7 8 9 10 12 16 24 28 32 56 64 100 128 256 1000 2048"
).split()
PUNCT = [".", ",", ";", ":", "?", "!"]


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    prompt_tokens: int  # text tokens of the rendered prompt (text) or of the user text (media)
    max_tokens: int
    images: int = 0
    video: bool = False
    url: bool = False

    @property
    def media_kind(self) -> str | None:
        return "image" if self.images else ("video" if self.video else None)


WORKLOADS: dict[str, WorkloadSpec] = {
    "text": WorkloadSpec("text", 512, 128),
    "image": WorkloadSpec("image", 128, 128, images=2),
    "image-url": WorkloadSpec("image-url", 128, 128, images=2, url=True),
    "video": WorkloadSpec("video", 64, 64, video=True),
    "video-url": WorkloadSpec("video-url", 64, 64, video=True, url=True),
    "multiturn": WorkloadSpec("multiturn", 64, 64, images=5),
}


@dataclass(frozen=True)
class ConversationShape:
    turns: int = 8
    window: int = 5  # images in each request: the newest ``window`` of the user's sequence
    image_width: int = 2400
    image_height: int = 1080
    answer_tokens: int = 48  # the fixed "assistant" text each earlier turn carries in the history


@dataclass(frozen=True)
class MediaShape:
    image_width: int = 1920
    image_height: int = 1080
    jpeg_quality: int = 90
    video_width: int = 640
    video_height: int = 360
    video_seconds: float = 4.0
    video_fps: float = 30.0


# ------------------------------------------------------------------------------------------- text
class TokenCounter:
    """Counts tokens with the checkpoint's own tokenizer (tokenizer.json via `tokenizers`)."""

    def __init__(self, model_dir: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, n: int) -> str:
        ids = self.tok.encode(text, add_special_tokens=False).ids[:n]
        return self.tok.decode(ids, skip_special_tokens=False)


# The Qwen2.5 chat template around one user turn (the default system prompt is added by the template).
TEMPLATE_OVERHEAD_TEXT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                          "<|im_end|>\n<|im_start|>assistant\n")


def random_text(rng: random.Random, n_words: int) -> str:
    out = []
    for k in range(n_words):
        w = rng.choice(WORDS)
        if k == 0 or out[-1][-1] in ".?!":
            w = w[:1].upper() + w[1:]
        out.append(w)
        if rng.random() < 0.08:
            out[-1] += rng.choice(PUNCT)
    return " ".join(out) + "."


def make_text(counter: TokenCounter, seed: int, n_tokens: int) -> str:
    """Varied text of exactly ``n_tokens`` tokens (re-tokenization may differ by one or two)."""
    rng = random.Random(seed)
    text = f"Request {seed}. " + random_text(rng, max(8, n_tokens))
    while counter.count(text) < n_tokens:
        text += " " + random_text(rng, n_tokens // 2 + 8)
    return counter.truncate(text, n_tokens)


# ------------------------------------------------------------------------------------------- media
def _seed(workload: str, index: int, k: int = 0) -> int:
    # Distinct per workload, so e.g. image and image-url never share a picture (no cross-workload cache hits).
    base = {"image": 1, "image-url": 2, "video": 3, "video-url": 4, "multiturn": 5}.get(workload, 9)
    return base * 10_000_000 + index * 16 + k


def image_path(assets: Path, workload: str, index: int, k: int) -> Path:
    return assets / "images" / f"{workload}-{index:06d}-{k}.jpg"


def video_path(assets: Path, workload: str, index: int) -> Path:
    return assets / "videos" / f"{workload}-{index:06d}.mp4"


def _write_image(path: str, seed: int, w: int, h: int, q: int) -> int:
    from serve_app.dev import synth_media as synth

    data = synth.jpeg(w, h, seed=seed, quality=q)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def _write_video(path: str, seed: int, w: int, h: int, seconds: float, fps: float) -> int:
    from serve_app.dev import synth_media as synth

    n = max(2, int(round(seconds * fps)))
    try:
        data = synth.video(w, h, n, fps=fps, seed=seed)
    except Exception:  # noqa: BLE001 - no libx264 in this PyAV build: MPEG-4 part 2 in MP4
        data = synth.video(w, h, n, fps=fps, seed=seed, codec="mpeg4")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def ensure_media(assets: Path, spec: WorkloadSpec, indices: list[int], media: MediaShape,
                 workers: int | None = None) -> dict[str, Any]:
    """Write the media files the given request indices need (missing ones only, in parallel)."""
    (assets / "images").mkdir(parents=True, exist_ok=True)
    (assets / "videos").mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in indices:
        for k in range(spec.images):
            p = image_path(assets, spec.name, i, k)
            if not p.exists():
                jobs.append((_write_image, str(p), _seed(spec.name, i, k), media.image_width, media.image_height,
                             media.jpeg_quality))
        if spec.video:
            p = video_path(assets, spec.name, i)
            if not p.exists():
                jobs.append((_write_video, str(p), _seed(spec.name, i), media.video_width, media.video_height,
                             media.video_seconds, media.video_fps))
    if jobs:
        n = workers or max(1, min(len(jobs), (os.cpu_count() or 2)))
        with cf.ProcessPoolExecutor(max_workers=n) as ex:
            futs = [ex.submit(fn, *a) for fn, *a in jobs]
            for f in futs:
                f.result()
    return {"written": len(jobs)}


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# ------------------------------------------------------------------------------------------- bodies
def messages_for(spec: WorkloadSpec, index: int, counter: TokenCounter, assets: Path,
                 media_base_url: str | None) -> list[dict[str, Any]]:
    if spec.media_kind is None:
        overhead = counter.count(TEMPLATE_OVERHEAD_TEXT)
        text = make_text(counter, seed=index, n_tokens=max(1, spec.prompt_tokens - overhead))
        return [{"role": "user", "content": text}]
    parts: list[dict[str, Any]] = []
    if spec.images:
        for k in range(spec.images):
            p = image_path(assets, spec.name, index, k)
            url = (f"{media_base_url}/images/{p.name}" if spec.url else data_uri(p, "image/jpeg"))
            parts.append({"type": "image_url", "image_url": {"url": url}})
    if spec.video:
        p = video_path(assets, spec.name, index)
        url = f"{media_base_url}/videos/{p.name}" if spec.url else data_uri(p, "video/mp4")
        parts.append({"type": "video_url", "video_url": {"url": url}})
    parts.append({"type": "text", "text": make_text(counter, seed=1_000_000 + index, n_tokens=spec.prompt_tokens)})
    return [{"role": "user", "content": parts}]


def request_body(model: str, messages: list[dict[str, Any]], max_tokens: int) -> bytes:
    """The request both servers get: streaming, usage in the last chunk, greedy, exactly max_tokens."""
    return json.dumps({
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }, separators=(",", ":")).encode()


def build_bodies(spec: WorkloadSpec, indices: list[int], *, model: str, counter: TokenCounter, assets: Path,
                 media_base_url: str | None, max_tokens: int | None = None) -> list[bytes]:
    mt = max_tokens or spec.max_tokens
    if spec.url and not media_base_url:
        raise ValueError(f"workload {spec.name} needs the static media server's URL")
    return [request_body(model, messages_for(spec, i, counter, assets, media_base_url), mt) for i in indices]


def plan_indices(levels: list[int], requests: list[int], warmup: int) -> list[tuple[int, list[int], list[int]]]:
    """(concurrency, warm-up indices, timed indices) per level; indices never repeat within a workload."""
    out = []
    nxt = 0
    for c, n in zip(levels, requests):
        w = list(range(nxt, nxt + warmup))
        nxt += warmup
        t = list(range(nxt, nxt + n))
        nxt += n
        out.append((c, w, t))
    return out


# ------------------------------------------------------------------------------------- multi-turn
def conversation_image_path(assets: Path, user: int, k: int) -> Path:
    return assets / "images" / f"multiturn-u{user:05d}-{k:02d}.jpg"


def ensure_conversation_media(assets: Path, users: list[int], shape: ConversationShape,
                              workers: int | None = None) -> dict[str, Any]:
    (assets / "images").mkdir(parents=True, exist_ok=True)
    jobs = []
    for u in users:
        for k in range(shape.turns + shape.window - 1):
            p = conversation_image_path(assets, u, k)
            if not p.exists():
                jobs.append((str(p), _seed("multiturn", u, k), shape.image_width, shape.image_height, 90))
    if jobs:
        with cf.ProcessPoolExecutor(max_workers=workers or max(1, min(len(jobs), os.cpu_count() or 2))) as ex:
            for f in [ex.submit(_write_image, *a) for a in jobs]:
                f.result()
    return {"written": len(jobs)}


def conversation_bodies(user: int, shape: ConversationShape, *, model: str, counter: TokenCounter, assets: Path,
                        max_tokens: int, prompt_tokens: int = 64,
                        uri_cache: dict[Path, str] | None = None) -> list[tuple[int, int, bytes]]:
    """The ``shape.turns`` requests of one user, in order: (user, turn, body)."""
    uri_cache = {} if uri_cache is None else uri_cache
    history: list[dict[str, Any]] = []
    out = []
    for t in range(shape.turns):
        parts: list[dict[str, Any]] = []
        for k in range(t, t + shape.window):
            p = conversation_image_path(assets, user, k)
            if p not in uri_cache:
                uri_cache[p] = data_uri(p, "image/jpeg")
            parts.append({"type": "image_url", "image_url": {"url": uri_cache[p]}})
        question = make_text(counter, seed=5_000_000 + user * 64 + t, n_tokens=prompt_tokens)
        parts.append({"type": "text", "text": question})
        out.append((user, t, request_body(model, history + [{"role": "user", "content": parts}], max_tokens)))
        answer = make_text(counter, seed=6_000_000 + user * 64 + t, n_tokens=shape.answer_tokens)
        history = history + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return out
