"""The generated tiny Qwen2.5-VL checkpoint: determinism, ids, HF loading, and a real vLLM run."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import threading

# vLLM reads these lazily, but set them before anything can import it. No network, no usage stats.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from PIL import Image

from serve_app.dev import tiny_model as tm

REPO = pathlib.Path(__file__).resolve().parents[2]
FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
}
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_SLOT = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE_VIDEO_MESSAGES = [
    {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "video"},
            {"type": "text", "text": "Describe both."},
        ],
    }
]
# Pin both edges: the HF processor call rejects a `size` with only one of them.
NO_UPSCALE = {"size": {"shortest_edge": 28 * 28, "longest_edge": tm.MAX_PIXELS}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> pathlib.Path:
    return tm.build(tmp_path_factory.mktemp("tiny") / "ckpt")


def _digests(d: pathlib.Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _rand_image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _rand_video(t: int, h: int, w: int, fps: float = 2.0, seed: int = 1):
    frames = np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    meta = {"fps": fps, "frames_indices": list(range(t)), "total_num_frames": t, "duration": t / fps}
    return frames, meta


# ------------------------------------------------------------------------------------------
# Build, determinism, cache
# ------------------------------------------------------------------------------------------
def test_files_and_determinism_across_processes(ckpt, tmp_path):
    assert {p.name for p in ckpt.iterdir()} == FILES
    # Second build through the CLI in a fresh interpreter (different hash seed): byte-identical.
    out = subprocess.run(
        [sys.executable, "-m", "serve_app.dev.tiny_model", str(tmp_path / "again")],
        cwd=REPO,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert pathlib.Path(out.stdout.strip()) == tmp_path / "again"
    assert _digests(tmp_path / "again") == _digests(ckpt)


def test_ensure_builds_once_and_survives_a_race(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_APP_CACHE", str(tmp_path))
    barrier = threading.Barrier(3)
    results: list[pathlib.Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            results.append(tm.ensure())
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(results)) == 1
    target = results[0]
    assert target.parent == tmp_path and target.name.startswith("tiny-qwen2.5-vl-v1-")
    assert {p.name for p in target.iterdir()} == FILES
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # losers cleaned up
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)

    # Cached now: no rebuild.
    monkeypatch.setattr(tm, "build", lambda *_: pytest.fail("rebuilt a cached checkpoint"))
    assert tm.ensure() == target
    assert tm.ensure(tmp_path) == target


# ------------------------------------------------------------------------------------------
# Config / tokenizer / processor through the ordinary transformers loaders
# ------------------------------------------------------------------------------------------
def test_config_matches_tokenizer(ckpt):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    cfg = AutoConfig.from_pretrained(ckpt)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok.convert_tokens_to_ids
    assert cfg.model_type == "qwen2_5_vl" and cfg.architectures == ["Qwen2_5_VLForConditionalGeneration"]
    assert cfg.image_token_id == ids("<|image_pad|>")
    assert cfg.video_token_id == ids("<|video_pad|>")
    assert cfg.vision_start_token_id == ids("<|vision_start|>")
    assert cfg.vision_end_token_id == ids("<|vision_end|>")
    text = cfg.text_config
    assert text.vocab_size >= len(tok)
    assert text.eos_token_id == tok.eos_token_id == ids("<|im_end|>")
    assert text.pad_token_id == tok.pad_token_id == ids("<|endoftext|>")
    assert text.bos_token_id == ids("<|endoftext|>") and tok.bos_token is None
    # Every Qwen2.5-VL added token, at the id the module advertises.
    for token, _special in tm.ADDED_TOKENS:
        assert ids(token) == tm.TOKEN_IDS[token], token
    assert len(tok) == tm.BASE_VOCAB_SIZE + len(tm.ADDED_TOKENS)
    # Special tokens are atomic, text round-trips through the byte-level BPE.
    assert tok("<|im_start|>user\n", add_special_tokens=False).input_ids[0] == ids("<|im_start|>")
    sample = "Describe this image, 你好 — naïve café!"
    assert tok.decode(tok(sample).input_ids) == sample

    # Shapes the CPU backend needs, and M-RoPE consistent with head_dim.
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim >= 32 and cfg.vision_config.hidden_size // cfg.vision_config.num_heads >= 32
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert all(0 <= i < cfg.vision_config.depth for i in cfg.vision_config.fullatt_block_indexes)
    assert cfg.vision_config.out_hidden_size == text.hidden_size

    gen = GenerationConfig.from_pretrained(ckpt)
    assert ids("<|im_end|>") in gen.eos_token_id


def test_transformers_loads_every_weight(ckpt):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set(), info
    assert info["mismatched_keys"] == set() and not info["error_msgs"], info
    assert str(model.dtype) == "torch.bfloat16"


def test_processor_chat_template_official_layout(ckpt):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(ckpt)
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    assert type(proc.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert type(proc.video_processor).__name__ == "Qwen2VLVideoProcessor"

    prompt = proc.apply_chat_template(IMAGE_VIDEO_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        SYSTEM + "<|im_start|>user\n" + IMAGE_SLOT + VIDEO_SLOT + "Describe both.<|im_end|>\n<|im_start|>assistant\n"
    )
    with_ids = proc.apply_chat_template(
        IMAGE_VIDEO_MESSAGES, tokenize=False, add_generation_prompt=True, add_vision_id=True
    )
    assert "Picture 1: " + IMAGE_SLOT + "Video 1: " + VIDEO_SLOT in with_ids
    # An explicit system message replaces the default one; no generation prompt without the flag.
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert proc.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    # The tokenizer carries the same template (AutoTokenizer-only consumers).
    assert proc.tokenizer.chat_template == tm.CHAT_TEMPLATE
    assert json.loads((ckpt / "chat_template.json").read_text())["chat_template"] == tm.CHAT_TEMPLATE

    # Pre-sized media (multiples of 28, inside min/max pixels) is not resized: 56x84 -> 2x3
    # merged patches per image and per 2-frame temporal patch.
    frames, _meta = _rand_video(4, 56, 84)
    enc = proc(text=[prompt], images=[_rand_image(56, 84)], videos=[frames], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    assert ids.count(tm.IMAGE_TOKEN_ID) == 6
    assert ids.count(tm.VIDEO_TOKEN_ID) == 2 * 6
    assert enc["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert enc["video_grid_thw"].tolist() == [[2, 4, 6]]


# ------------------------------------------------------------------------------------------
# Real vLLM (CPU build)
# ------------------------------------------------------------------------------------------
class _Engines:
    """At most one vLLM engine alive in this process (in-process engine core), rebuilt when a
    test asks for different engine kwargs."""

    def __init__(self, model: pathlib.Path):
        self.model = model
        self.kwargs: dict | None = None
        self.llm = None

    def get(self, **kwargs):
        if self.llm is None or kwargs != self.kwargs:
            self.close()
            from vllm import LLM

            self.llm = LLM(
                model=str(self.model),
                enforce_eager=True,
                max_model_len=4096,
                limit_mm_per_prompt={"image": 1, "video": 1},
                seed=0,
                **kwargs,
            )
            self.kwargs = kwargs
        return self.llm

    def close(self) -> None:
        if self.llm is not None:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            self.llm = None
            gc.collect()
            cleanup_dist_env_and_memory()


@pytest.fixture(scope="module")
def engines(ckpt):
    pool = _Engines(ckpt)
    yield pool
    pool.close()


def _greedy(max_tokens: int = 4):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0)


def _user_prompt(tok, *parts: dict) -> str:
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "Describe."}]}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _n_text_tokens(tok, prompt: str) -> int:
    return len(tok(prompt, add_special_tokens=False).input_ids)


def _check_generated(out, n_tokenizer: int) -> None:
    ids = list(out.outputs[0].token_ids)
    assert 1 <= len(ids) <= 4
    assert len(ids) == 4 or out.outputs[0].finish_reason == "stop"
    # Greedy never lands on the zeroed rows past the tokenizer (see tiny_model._weights).
    assert all(0 <= i < n_tokenizer for i in ids), ids


@pytest.mark.e2e
def test_vllm_text_image_video(engines):
    llm = engines.get()
    tok = llm.get_tokenizer()
    n_tok = len(tok)

    # (a) text
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True)
    out = llm.generate(prompt, _greedy(), use_tqdm=False)[0]
    assert out.prompt_token_ids == tok(prompt, add_special_tokens=False).input_ids
    _check_generated(out, n_tok)
    again = llm.generate(prompt, _greedy(), use_tqdm=False)[0]
    assert list(again.outputs[0].token_ids) == list(out.outputs[0].token_ids)  # greedy is stable

    # (b) one 56x84 image: the single <|image_pad|> expands to (56/28)*(84/28) = 6 pads, i.e.
    # the engine-side HF processor kept the size (no re-resize).
    prompt = _user_prompt(tok, {"type": "image"})
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"image": _rand_image(56, 84)}}, _greedy(), use_tqdm=False)[0]
    assert out.prompt_token_ids.count(tm.IMAGE_TOKEN_ID) == 6
    assert len(out.prompt_token_ids) == _n_text_tokens(tok, prompt) - 1 + 6
    _check_generated(out, n_tok)

    # (c) 4 frames of 56x84 -> 2 temporal patches x 6 = 12 pads.
    prompt = _user_prompt(tok, {"type": "video"})
    video = _rand_video(4, 56, 84)
    out = llm.generate({"prompt": prompt, "multi_modal_data": {"video": video}}, _greedy(), use_tqdm=False)[0]
    assert out.prompt_token_ids.count(tm.VIDEO_TOKEN_ID) == 12
    assert len(out.prompt_token_ids) == _n_text_tokens(tok, prompt) - 1 + 12
    _check_generated(out, n_tok)


@pytest.mark.e2e
def test_vllm_default_min_pixels_upscales_small_media(engines):
    """With the checkpoint's processor defaults (min_pixels 3136) the engine upscales a 28x28
    image to 56x56 (4 pads instead of 1), and 28x28 video frames likewise; a request-level
    ``mm_processor_kwargs`` lowering ``size.shortest_edge`` to 784 keeps it at 1 pad."""
    llm = engines.get()
    tok = llm.get_tokenizer()
    img_prompt = _user_prompt(tok, {"type": "image"})
    vid_prompt = _user_prompt(tok, {"type": "video"})
    small = _rand_image(28, 28)

    out = llm.generate({"prompt": img_prompt, "multi_modal_data": {"image": small}}, _greedy(), use_tqdm=False)[0]
    assert out.prompt_token_ids.count(tm.IMAGE_TOKEN_ID) == 4
    out = llm.generate(
        {"prompt": vid_prompt, "multi_modal_data": {"video": _rand_video(4, 28, 28)}}, _greedy(), use_tqdm=False
    )[0]
    assert out.prompt_token_ids.count(tm.VIDEO_TOKEN_ID) == 2 * 4

    out = llm.generate(
        {"prompt": img_prompt, "multi_modal_data": {"image": small}, "mm_processor_kwargs": NO_UPSCALE},
        _greedy(),
        use_tqdm=False,
    )[0]
    assert out.prompt_token_ids.count(tm.IMAGE_TOKEN_ID) == 1


@pytest.mark.e2e
def test_vllm_engine_mm_processor_kwargs_disable_upscaling(engines):
    """Engine-level ``mm_processor_kwargs`` (what the project's engine config sets) applies to
    images and videos alike; pre-sized inputs keep their exact token counts."""
    llm = engines.get(mm_processor_kwargs=NO_UPSCALE)
    tok = llm.get_tokenizer()
    img_prompt = _user_prompt(tok, {"type": "image"})
    vid_prompt = _user_prompt(tok, {"type": "video"})
    for (h, w), pads in {(28, 28): 1, (28, 56): 2, (56, 84): 6}.items():
        out = llm.generate(
            {"prompt": img_prompt, "multi_modal_data": {"image": _rand_image(h, w)}}, _greedy(), use_tqdm=False
        )[0]
        assert out.prompt_token_ids.count(tm.IMAGE_TOKEN_ID) == pads, (h, w)
        _check_generated(out, len(tok))
        out = llm.generate(
            {"prompt": vid_prompt, "multi_modal_data": {"video": _rand_video(4, h, w)}}, _greedy(), use_tqdm=False
        )[0]
        assert out.prompt_token_ids.count(tm.VIDEO_TOKEN_ID) == 2 * pads, (h, w)
