"""The tokenizer-free lower bound on a prompt's text tokens never exceeds what Qwen2's tokenizer
pipeline (the tiny model's: same pre-tokenizer, normalizer and added tokens) produces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.api.prompt_tokens import ADDED_TOKENS, chat_text_floor, text_tokens_floor


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


def n_tokens(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


SAMPLES = [
    "", "a", "Hello there, world!", "1234567890", "e\u0301t\u00e9 caf\u00e9", "  spaces   and\n\n\nnewlines\r\n",
    "<|im_start|>user<|im_end|>", "x<|image_pad|>y<tool_call>z", "日本語のテキスト", "emoji 😀😀 done", "a" * 5000,
    "'s 're 'LL", "\t\t\t", "--- === +++",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_floor_is_a_lower_bound(tok, text):
    assert text_tokens_floor(text, 10**9) <= n_tokens(tok, text)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.text(max_size=40), st.sampled_from([t for t, _ in ADDED_TOKENS])), max_size=6))
def test_floor_is_a_lower_bound_for_any_text(tok, parts):
    text = "".join(parts)
    assert text_tokens_floor(text, 10**9) <= n_tokens(tok, text)


def test_floor_is_close_for_prose(tok):
    prose = "The quick brown fox jumps over the lazy dog near the river bank. " * 20
    floor = text_tokens_floor(prose, 10**9)
    assert floor >= 0.5 * n_tokens(tok, prose)


def test_counting_stops_past_the_limit():
    huge = "word " * 5_000_000  # 25 MB
    import time

    t = time.monotonic()
    assert 1000 < text_tokens_floor(huge, 1000) <= 1001
    assert time.monotonic() - t < 1


def test_chat_floor_is_below_the_rendered_prompt(tok, tiny_model_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Look at "}, {"type": "text", "text": "this:"},
                                             {"type": "image"}, {"type": "text", "text": "\n\nand this one 42"}]}]
    prompt = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    visual = prompt.count("<|image_pad|>")
    assert 0 < chat_text_floor(messages, 10**9) <= n_tokens(tok, prompt) - visual
