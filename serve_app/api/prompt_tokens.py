"""A lower bound on the tokens of a chat's text, without a tokenizer (pure).

Qwen2's tokenizer first splits out its added tokens, normalizes the rest (NFC) and cuts it into
pieces with one regular expression; byte-level BPE then turns every piece into one token or more. So
the number of pieces is a lower bound on the tokens, computable here with the same expression: the
ingress gets the media budget right without loading a tokenizer (the engine renders and tokenizes
every prompt with vLLM's). The tiny development model's tokenizer is built from these constants.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import regex

# Qwen2's pre-tokenization regex (transformers' models/qwen2/tokenization_qwen2.py).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The added tokens of Qwen2.5-VL in their released order, with their `special` flag.
ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]

_PIECE = regex.compile(PRETOKENIZE_REGEX)
_ADDED = re.compile("|".join(re.escape(t) for t, _ in ADDED_TOKENS))
# Normalized and scanned a slice at a time, so a huge text is neither copied whole nor counted past
# the limit; a piece cut by a slice boundary is counted once (one less per boundary).
_SLICE = 1 << 20


def _pieces(text: str, start: int, end: int, limit: int) -> int:
    n = 0
    for i in range(start, end, _SLICE):
        count = 0
        for _ in _PIECE.finditer(unicodedata.normalize("NFC", text[i:min(i + _SLICE, end)])):
            count += 1
            if n + count > limit:
                break
        n += count - 1 if i > start and count else count
        if n > limit:
            break
    return n


def text_tokens_floor(text: str, limit: int) -> int:
    """At least this many tokens encode ``text`` (counting stops once past ``limit``)."""
    n, pos = 0, 0
    for m in _ADDED.finditer(text):
        n += _pieces(text, pos, m.start(), limit - n) + 1
        pos = m.end()
        if n > limit:
            return n
    return n + _pieces(text, pos, len(text), limit - n)


def _runs(content: Any) -> Iterable[str]:
    """The stretches of text the chat template writes between its own tokens."""
    if isinstance(content, str):
        yield content
        return
    run: list[str] = []
    for part in content or ():
        if part.get("type") == "text":
            run.append(part.get("text") or "")
        elif run:
            yield "".join(run)
            run = []
    if run:
        yield "".join(run)


def chat_text_floor(template_messages: list[dict[str, Any]], limit: int) -> int:
    """At least this many tokens for the text of ``template_messages`` (the chat plan's), not
    counting the template's own; counting stops once past ``limit``. A stretch's first piece may
    join the template text before it, so each counts one piece less."""
    n = 0
    for msg in template_messages:
        for run in _runs(msg.get("content")):
            n += max(text_tokens_floor(run, limit - n + 1) - 1, 0)
            if n > limit:
                return n
    return n
