"""A tiny, self-generated Qwen2.5-VL checkpoint for tests and the embedded default.

``build(out_dir)`` writes a complete Hugging Face checkpoint directory with the REAL
Qwen2.5-VL architecture (``Qwen2_5_VLForConditionalGeneration``) at toy dimensions:
config, seeded random weights under the tensor names the released checkpoints use, a
byte-level BPE tokenizer trained on the spot with Qwen's special tokens, the official chat
template and the image/video processor configs. vLLM and transformers load it with their
ordinary code (``AutoConfig`` / ``AutoProcessor`` / ``vllm.LLM(model=dir)``), the same path as
Qwen2.5-VL-72B-Instruct, so everything but the numbers is exercised without a download.

``ensure()`` returns a cached build (built once per generator version, safe under concurrent
callers). ``python -m serve_app.dev.tiny_model OUT_DIR`` builds into OUT_DIR.

Builds are deterministic: two builds are byte-identical (given the same torch/tokenizers).
No Ray or vLLM imports here, by design.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

# Bump when the generated checkpoint changes in a way callers should notice; the cache key also
# hashes this file's source, so any edit yields a fresh cache directory.
GENERATOR_VERSION = "v1"
SEED = 20250219

# ---------------------------------------------------------------------------------------------
# Dimensions. Real Qwen2.5-VL-72B values in comments.
# ---------------------------------------------------------------------------------------------
# Text: head_dim = 128 / 4 = 32, the smallest head size vLLM's CPU attention backend
# (CPU_ATTN: 32, 64, 80, 96, 112, 128, ...) accepts; the ViT keeps 32 as well.
# Heads (4 text, 2 KV, 2 vision) allow tensor_parallel_size 1 or 2.
TEXT_HIDDEN = 128  # 8192
TEXT_HEADS = 4  # 64
TEXT_KV_HEADS = 2  # 8 (GQA kept)
TEXT_LAYERS = 2  # 80
TEXT_INTERMEDIATE = 256  # 29568
TEXT_HEAD_DIM = TEXT_HIDDEN // TEXT_HEADS
# M-RoPE (temporal, height, width) split of the rotary half-dim; must sum to head_dim / 2.
# Same 2:3:3 proportion as the real [16, 24, 24] for head_dim 128.
MROPE_SECTION = [4, 6, 6]
MAX_POSITION_EMBEDDINGS = 32768  # 128000
ROPE_THETA = 1000000.0

# Vision: head_dim = 64 / 2 = 32.
VISION_DEPTH = 4  # 32
VISION_HIDDEN = 64  # 1280
VISION_HEADS = 2  # 16
VISION_INTERMEDIATE = 128  # 3420 in the 7B
FULLATT_BLOCK_INDEXES = [1, 3]  # [7, 15, 23, 31]: every (depth/4)th block and the last
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
SPATIAL_MERGE_SIZE = 2
WINDOW_SIZE = 112
TOKENS_PER_SECOND = 2  # as in the released Qwen2.5-VL configs (the transformers default is 4)
IN_CHANNELS = 3

# bfloat16, as the released checkpoints: the CPU build of vLLM runs bf16 natively (x86 with
# AVX512-BF16/AMX, and it is on its supported list for x86/aarch64 regardless), it halves KV
# cache and weight memory, and on GPU it keeps the FlashAttention backend that serves the 72B
# (float32 would push vLLM's GPU path onto a different attention backend). It also means
# dtype="auto" resolves to the same dtype as in production.
DTYPE = "bfloat16"
INIT_STD = 0.02

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
BASE_VOCAB_SIZE = 1024  # byte-level BPE vocabulary before the added tokens (151643 in Qwen)

# Qwen2.5-VL's added tokens (in their released order, ids following the BPE vocabulary as in the real
# tokenizer: 151643..151664 there, 1024..1045 here) and Qwen2's pre-tokenization regex: the constants
# the ingress's tokenizer-free text count uses, so the tiny tokenizer is built from the same ones.
from serve_app.api.prompt_tokens import ADDED_TOKENS, PRETOKENIZE_REGEX  # noqa: E402

TOKEN_IDS: dict[str, int] = {tok: BASE_VOCAB_SIZE + i for i, (tok, _) in enumerate(ADDED_TOKENS)}
ENDOFTEXT_ID = TOKEN_IDS["<|endoftext|>"]
IM_START_ID = TOKEN_IDS["<|im_start|>"]
IM_END_ID = TOKEN_IDS["<|im_end|>"]
VISION_START_ID = TOKEN_IDS["<|vision_start|>"]
VISION_END_ID = TOKEN_IDS["<|vision_end|>"]
IMAGE_TOKEN_ID = TOKEN_IDS["<|image_pad|>"]
VIDEO_TOKEN_ID = TOKEN_IDS["<|video_pad|>"]
# Embedding rows, padded past the tokenizer like the real 152064 > 151665 (multiple of 128).
VOCAB_SIZE = -(-(BASE_VOCAB_SIZE + len(ADDED_TOKENS)) // 128) * 128

# The official Qwen2.5-VL chat template (chat_template.json of the Qwen/Qwen2.5-VL-*-Instruct
# repositories), verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Image processor: the released preprocessor_config.json of Qwen2.5-VL.
MIN_PIXELS = 56 * 56  # 3136
MAX_PIXELS = 28 * 28 * 16384  # 12845056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Training corpus for the BPE: plain chat/vision-flavoured English plus a little of other
# scripts so multi-byte merges exist. Fixed text -> fixed merges.
_CORPUS = """\
You are a helpful assistant. Describe this image. What is in the picture?
The image shows a small red square on a white background, next to a blue circle.
Please describe the video in detail. The video shows a person walking along a road.
What text appears in the image? Answer the question using a single word or phrase.
There are three cats sitting on a wooden table, and one of them is looking at the camera.
Count the objects in the picture and give their positions as bounding boxes.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Summarize the following document in three sentences, then list the key points.
A chart compares revenue for the first, second, third and fourth quarters of the year.
The weather today is sunny with a light breeze from the west and a high of 24 degrees.
Translate the sentence into French: the train leaves the station at seven o'clock.
He said: "I'll be there soon", but she didn't believe him; they'd heard it before.
Step 1: open the file. Step 2: read every line. Step 3: write the result to disk.
def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 28 32 56 64 100 128 256 1000 2048 3136.
The frame rate of the clip is 2 frames per second and it lasts for about 10 seconds.
Picture 1: a mountain lake at sunrise. Picture 2: a city street at night. Video 1: waves.
这是一张图片。请描述这个视频。图中有一只猫。你好，世界！
Das Bild zeigt einen Hund im Park. La imagen muestra un perro en el parque. Voilà, c'est ça.
Вот изображение кошки. 画像には猫が写っています。 사진에 고양이가 있습니다.
Colors: red orange yellow green blue purple violet black white gray brown pink silver gold.
Animals: horse sheep goat rabbit mouse tiger lion zebra giraffe elephant monkey penguin eagle.
Days and months: Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February
March April May June July August September October November December morning evening night.
Things: building bridge window kitchen bottle glasses keyboard monitor bicycle airplane
umbrella backpack mountain river forest garden flower tree grass sand snow cloud rain storm.
Verbs: running jumping reading writing cooking driving swimming flying holding pointing
smiling standing sitting looking walking talking playing working sleeping eating drinking.
"""


def _corpus_lines() -> list[str]:
    lines = _CORPUS.splitlines(keepends=True)
    # Repeat with light, deterministic variation so frequent pairs dominate the merges.
    out: list[str] = []
    for i in range(8):
        for line in lines:
            out.append(line if i % 2 == 0 else line.lower())
    return out


def _build_tokenizer() -> Any:
    """Train the byte-level BPE and append Qwen's added tokens (ids BASE_VOCAB_SIZE...)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # The same pipeline as Qwen2's tokenizer.json (and transformers' Qwen2Tokenizer).
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    got = tok.get_vocab_size()
    if got != BASE_VOCAB_SIZE:  # the corpus must be rich enough to reach the target exactly
        raise RuntimeError(f"BPE training produced {got} tokens, expected {BASE_VOCAB_SIZE}")
    tok.add_tokens(
        [
            AddedToken(t, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
            for t, special in ADDED_TOKENS
        ]
    )
    for t, i in TOKEN_IDS.items():
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t), i)
    return tok


def _tokenizer_config() -> dict[str, Any]:
    # Mirrors the released tokenizer_config.json (minus the 150k-entry vocab, of course).
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(TOKEN_IDS[t]): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for t, special in ADDED_TOKENS
        },
        "additional_special_tokens": [t for t, special in ADDED_TOKENS[1:] if special],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": MAX_POSITION_EMBEDDINGS,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# ---------------------------------------------------------------------------------------------
# Model config
# ---------------------------------------------------------------------------------------------
def _model_config() -> dict[str, Any]:
    """config.json in the transformers 5 layout (what Qwen2_5_VLConfig.save_pretrained writes).

    transformers 5 spells RoPE as ``text_config.rope_parameters`` = {rope_type, rope_theta,
    mrope_section}; the released checkpoints' legacy ``rope_scaling: {"type": "mrope", ...}``
    maps onto exactly this. vLLM 0.32 reads ``mrope_section`` from ``rope_parameters`` (its
    get_rope() picks MRotaryEmbedding when the key is present).
    """
    text_config = {
        "model_type": "qwen2_5_vl_text",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": TEXT_INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "initializer_range": INIT_STD,
        "rms_norm_eps": 1e-06,
        "use_cache": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": TEXT_LAYERS,
        "layer_types": ["full_attention"] * TEXT_LAYERS,
        "attention_dropout": 0.0,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": ROPE_THETA,
            "mrope_section": MROPE_SECTION,
        },
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "tie_word_embeddings": False,
        "dtype": DTYPE,
    }
    vision_config = {
        "model_type": "qwen2_5_vl_vision",
        "depth": VISION_DEPTH,
        "hidden_size": VISION_HIDDEN,
        "hidden_act": "silu",
        "intermediate_size": VISION_INTERMEDIATE,
        "num_heads": VISION_HEADS,
        "in_channels": IN_CHANNELS,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": SPATIAL_MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "tokens_per_second": TOKENS_PER_SECOND,
        "window_size": WINDOW_SIZE,
        "out_hidden_size": TEXT_HIDDEN,
        "fullatt_block_indexes": FULLATT_BLOCK_INDEXES,
        "initializer_range": INIT_STD,
        "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
        "dtype": DTYPE,
    }
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "text_config": text_config,
        "vision_config": vision_config,
        "image_token_id": IMAGE_TOKEN_ID,
        "video_token_id": VIDEO_TOKEN_ID,
        "vision_start_token_id": VISION_START_ID,
        "vision_end_token_id": VISION_END_ID,
        # Top level as in the released config.json. transformers 5 reads the ids from
        # text_config (and drops these), older readers and tools look here.
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
        # Untied like the 72B (and 7B): lm_head.weight is a separate tensor.
        "tie_word_embeddings": False,
        "dtype": DTYPE,
    }


def _generation_config() -> dict[str, Any]:
    # Token ids only. The released generation_config.json also carries sampling defaults
    # (repetition_penalty, temperature, top_p/top_k), which vLLM applies as request defaults
    # under generation_config="auto"; they are left out so a test model never changes sampling
    # behind a test's back. The project's engine config decides that knob explicitly.
    return {
        "bos_token_id": ENDOFTEXT_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
    }


def _preprocessor_config() -> dict[str, Any]:
    # The released Qwen2.5-VL preprocessor_config.json, field for field.
    return {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": SPATIAL_MERGE_SIZE,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }


def _video_preprocessor_config() -> dict[str, Any]:
    """video_preprocessor_config.json for transformers 5's Qwen2VLVideoProcessor.

    The released Qwen2.5-VL repositories ship no video config; transformers 5 then builds the
    video processor from preprocessor_config.json, so the 72B's effective video limits are the
    image ones (size 3136..12845056 pixels per frame), NOT Qwen2VLVideoProcessor's class
    defaults (128*28*28..768*28*28, which would upscale small frames). Writing that effective
    configuration explicitly keeps the tiny model's video path identical to the 72B's.
    """
    return {
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": SPATIAL_MERGE_SIZE,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
        "do_resize": True,
        "resample": 3,  # PIL.Image.BICUBIC
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_sample_frames": False,
        # transformers 5.19 warns when this is unset and treats it as False (no per-frame cap
        # from a whole-video token budget); pinned to that current behaviour, which is also the
        # 72B's effective one, to keep logs quiet. transformers 5.22 drops the knob and caps.
        "cap_pixels_per_frame": False,
        "min_frames": 4,
        "max_frames": 768,
        "video_processor_type": "Qwen2VLVideoProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------
def weight_shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes, in the released checkpoints' naming (``model.*``, ``visual.*``,
    ``lm_head``; pre-transformers-4.52 layout), which vLLM maps with the same WeightsMapper
    rules as for the 72B."""
    h, i, hd = TEXT_HIDDEN, TEXT_INTERMEDIATE, TEXT_HEAD_DIM
    q, kv = TEXT_HEADS * hd, TEXT_KV_HEADS * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB_SIZE, h)}
    for n in range(TEXT_LAYERS):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, q),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (VOCAB_SIZE, h)

    vh, vi = VISION_HIDDEN, VISION_INTERMEDIATE
    shapes["visual.patch_embed.proj.weight"] = (vh, IN_CHANNELS, TEMPORAL_PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
    for n in range(VISION_DEPTH):
        p = f"visual.blocks.{n}."
        shapes |= {
            p + "norm1.weight": (vh,),
            p + "attn.qkv.weight": (3 * vh, vh),
            p + "attn.qkv.bias": (3 * vh,),
            p + "attn.proj.weight": (vh, vh),
            p + "attn.proj.bias": (vh,),
            p + "norm2.weight": (vh,),
            p + "mlp.gate_proj.weight": (vi, vh),
            p + "mlp.gate_proj.bias": (vi,),
            p + "mlp.up_proj.weight": (vi, vh),
            p + "mlp.up_proj.bias": (vi,),
            p + "mlp.down_proj.weight": (vh, vi),
            p + "mlp.down_proj.bias": (vh,),
        }
    merged = vh * SPATIAL_MERGE_SIZE**2
    shapes |= {
        "visual.merger.ln_q.weight": (vh,),
        "visual.merger.mlp.0.weight": (merged, merged),
        "visual.merger.mlp.0.bias": (merged,),
        "visual.merger.mlp.2.weight": (TEXT_HIDDEN, merged),
        "visual.merger.mlp.2.bias": (TEXT_HIDDEN,),
    }
    return shapes


def _weights() -> dict[str, Any]:
    import torch

    dtype = getattr(torch, DTYPE)
    # A private generator: no global RNG state is touched or depended on.
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    tensors = {}
    for name, shape in weight_shapes().items():  # fixed order -> fixed draws
        if "norm" in name or "ln_q" in name:  # RMSNorm scales
            t = torch.ones(shape, dtype=torch.float32)
        else:
            t = torch.empty(shape, dtype=torch.float32).normal_(0.0, INIT_STD, generator=gen)
        tensors[name] = t.to(dtype).contiguous()
    # Rows past the tokenizer (VOCAB_SIZE padding) are zero: their logit is exactly 0 while the
    # best of ~1000 random logits is almost surely > 0, so greedy decoding never emits an id
    # the tokenizer cannot decode. (Sampling at temperature > 0 still can, rarely.)
    n_tok = BASE_VOCAB_SIZE + len(ADDED_TOKENS)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name][n_tok:] = 0
    return tensors


# ---------------------------------------------------------------------------------------------
# Build / cache
# ---------------------------------------------------------------------------------------------
def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
)


def build(out_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Write the tiny checkpoint into ``out_dir`` (created if missing) and return its path."""
    from safetensors.torch import save_file

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    _write_json(out / "config.json", _model_config())
    _write_json(out / "generation_config.json", _generation_config())
    # Metadata as transformers writes it; safetensors sorts tensors by name, so the file is
    # a pure function of the tensors.
    save_file(_weights(), str(out / "model.safetensors"), metadata={"format": "pt"})

    _build_tokenizer().save(str(out / "tokenizer.json"), pretty=True)
    _write_json(out / "tokenizer_config.json", _tokenizer_config())
    # The released repositories carry the template both here (the processor's, which vLLM and
    # transformers' AutoProcessor read) and in tokenizer_config.json (AutoTokenizer's).
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    _write_json(out / "preprocessor_config.json", _preprocessor_config())
    _write_json(out / "video_preprocessor_config.json", _video_preprocessor_config())
    for name in CHECKPOINT_FILES:  # safetensors creates its file 0600; make all world-readable
        (out / name).chmod(0o644)
    return out


def cache_key() -> str:
    """Directory name for this generator: version plus a hash of this module's source and of the
    tokenizer constants it imports."""
    from serve_app.api import prompt_tokens

    sources = pathlib.Path(__file__).read_bytes() + pathlib.Path(prompt_tokens.__file__).read_bytes()
    digest = hashlib.sha256(sources).hexdigest()[:12]
    return f"tiny-qwen2.5-vl-{GENERATOR_VERSION}-{digest}"


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SERVE_APP_CACHE") or pathlib.Path.home() / ".cache" / "serve_app")


def ensure(cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Return the cached tiny checkpoint, building it on first use.

    Concurrency-safe without locks: every caller that finds no checkpoint builds into its own
    temporary directory next to the target and renames it into place. ``os.rename`` of a
    directory is atomic and fails if the target exists and is non-empty, so exactly one build
    wins; losers discard theirs and use the winner's. A visible target is always complete.
    """
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / cache_key()
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a lost race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.dev.tiny_model",
        description="Write the tiny random-weight Qwen2.5-VL checkpoint used by tests and the embedded default.",
    )
    parser.add_argument("out_dir", help="directory to write the checkpoint into (created if missing)")
    args = parser.parse_args(argv)
    print(build(args.out_dir))


if __name__ == "__main__":
    main()
