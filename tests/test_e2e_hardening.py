"""End to end (real `serve run`, HTTP, vLLM CPU engine, the official openai client): values vLLM
refuses are 400s before any engine work (no request left unfinished), item budgets before any fetch,
API keys, and the server unharmed afterwards."""

from __future__ import annotations

import base64
import io
import os
import time

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT, ServeProcess, free_port, throughput_env, write_local_config

pytestmark = pytest.mark.e2e
MODEL = "qwen2.5-vl-tiny"
KEY = "e2e-key-7f3a"


@pytest.fixture(scope="module")
def served_keys(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("serve-keys")
    port = free_port()
    logs = ROOT / "build" / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    config = write_local_config(work / "serve.yaml", port, {"serving": {"api_keys_env": "SERVE_APP_E2E_KEYS"}})
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS="local", **throughput_env(),
               SERVE_APP_E2E_KEYS=f"other-key, {KEY}")
    proc = ServeProcess(config, logs / f"serve-keys-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log", port, env)
    try:
        proc.wait_ready(MODEL, timeout=420, headers={"Authorization": f"Bearer {KEY}"})
        yield proc
    finally:
        proc.stop()


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (200, 10, 10)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _client(served, key=KEY):
    import openai

    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.parametrize("extra, needle", [
    ({"stop": [""]}, "empty string"),
    ({"min_tokens": 8, "max_tokens": 4}, "min_tokens (8) must be less than or equal to max_tokens (4)"),
    ({"min_tokens": 10**9}, "does not fit this model's context length"),
    ({"seed": 2**64}, "seed"),
    ({"n": 2, "temperature": 0}, "greedy sampling"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "e", "schema": {"enum": [f"v{i}" for i in range(20_000)]}}}}, "at most 32768"),
])
def test_values_vllm_refuses_are_400s_and_leave_nothing_in_the_engine(served_keys, extra, needle):
    import openai

    with pytest.raises(openai.BadRequestError) as ei:
        _client(served_keys).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body=extra,
            **({"max_tokens": extra.pop("max_tokens")} if "max_tokens" in extra else {}))
    assert ei.value.status_code == 400 and needle in ei.value.body["message"], ei.value.body
    stats = httpx.get(f"{served_keys.base_url}/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert stats.json()["engine"]["unfinished_requests"] == 0


def test_item_budget_is_answered_before_any_decode(served_keys):
    import openai

    parts = [{"type": "image_url", "image_url": {"url": _png()}} for _ in range(5)]  # local.yaml: image: 4
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError, match="at most 4 images"):
        _client(served_keys).chat.completions.create(model=MODEL, max_tokens=2,
                                                     messages=[{"role": "user", "content": parts}])
    assert time.monotonic() - t0 < 5


def test_api_keys(served_keys):
    import openai

    with pytest.raises(openai.AuthenticationError) as ei:
        _client(served_keys, "wrong").chat.completions.create(
            model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 401 and ei.value.body["type"] == "invalid_request_error"
    r = httpx.get(f"{served_keys.base_url}/v1/models", timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == 401
    assert httpx.get(f"{served_keys.base_url}/health", timeout=30).status_code == 200
    out = _client(served_keys).chat.completions.create(
        model=MODEL, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _png()}}, {"type": "text", "text": "hi"}]}])
    assert out.usage.completion_tokens == 2


def test_keys_never_reach_the_log(served_keys):
    assert KEY not in served_keys.log_path.read_text(errors="replace")
