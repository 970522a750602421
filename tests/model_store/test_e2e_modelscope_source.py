"""End to end on the CPU build: `serve run` of a ModelScope repo id, from the loopback ModelScope
stand-in (tests/model_store/modelscope_standin.py) through the modelscope client, real Serve, HTTP and vLLM."""

from __future__ import annotations

import openai
import pytest

from tests.model_store.modelscope_standin import ModelScopeStandIn
from tests.model_store.test_e2e_model_sources import MODEL, serve

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ms_served(tmp_path_factory, tiny_model_dir):
    with ModelScopeStandIn("Qwen/Qwen2.5-VL-tiny", tiny_model_dir) as hub:
        cache = tmp_path_factory.mktemp("model-cache")
        args = {"model": {"path": "modelscope://Qwen/Qwen2.5-VL-tiny", "revision": "master", "served_name": MODEL,
                          "download": {"endpoint_url": hub.url, "cache_dir": str(cache)}}}
        for proc in serve(tmp_path_factory, args, {}):
            yield proc, hub, cache


def test_modelscope_model_served_after_one_download(ms_served):
    proc, hub, cache = ms_served
    client = openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=3, temperature=0)
    assert resp.usage.completion_tokens == 3
    assert hub.gets("model.safetensors") == [None]
    assert len(hub.gets("tokenizer.json")) == 1
    assert len(list(cache.rglob(".serve_app_model.json"))) == 1
