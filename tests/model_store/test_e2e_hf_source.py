"""End to end on the CPU build: `serve run` of a Hugging Face repo id with a pinned revision, from
the loopback hub stand-in (tests/model_store/hub_standin.py) through huggingface_hub, real Serve, HTTP and vLLM.
The checkpoint has a 2048-token native window and is served with the model card's long-video
switch (a larger max_position_embeddings)."""

from __future__ import annotations

import openai
import pytest

from tests.model_store.hub_standin import COMMIT, HubStandIn
from tests.model_store.test_e2e_model_sources import MODEL, NATIVE_WINDOW, long_prompt, serve
from tests.engine.test_long_context import small_window_checkpoint

pytestmark = pytest.mark.e2e
WINDOW = 3 * NATIVE_WINDOW


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_served(tmp_path_factory, tiny_model_dir):
    ckpt = small_window_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt") / "q", NATIVE_WINDOW)
    with HubStandIn("Qwen/Qwen2.5-VL-tiny", ckpt) as hub:
        cache = tmp_path_factory.mktemp("model-cache")
        args = {"model": {"path": "hf://Qwen/Qwen2.5-VL-tiny", "revision": COMMIT, "served_name": MODEL,
                          "download": {"endpoint_url": hub.url, "cache_dir": str(cache)},
                          "long_context": {"mode": "max_position_embeddings", "max_position_embeddings": WINDOW}},
                "engine": {"engine_kwargs": {"max_model_len": None}}}
        for proc in serve(tmp_path_factory, args, {"HF_HUB_OFFLINE": "0"}, {"HF_HUB_OFFLINE": "0"}):
            yield proc, hub, cache


def test_hf_model_served_after_one_download(hf_served):
    proc, hub, cache = hf_served
    client = openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=3, temperature=0)
    assert resp.usage.completion_tokens == 3
    # Preprocessor (tokenizer files) and engine (everything) shared one cache directory and the
    # weights came over the wire exactly once.
    assert hub.gets("model.safetensors") == [None]
    assert len(hub.gets("tokenizer.json")) == 1
    assert len(list(cache.rglob(".serve_app_model.json"))) == 1


def test_larger_max_position_embeddings_serves_past_the_native_window(hf_served, tokenizer):
    proc, _, _ = hf_served
    client = openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": long_prompt(tokenizer, 2 * NATIVE_WINDOW)}],
        max_tokens=2, temperature=0)
    assert resp.usage.prompt_tokens > 2 * NATIVE_WINDOW - 10 > NATIVE_WINDOW
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long_prompt(tokenizer, WINDOW + 100)}], max_tokens=2)
