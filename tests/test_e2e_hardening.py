"""End to end (real `serve run`, HTTP, vLLM CPU engine, the official openai client): values vLLM
refuses are 400s before any engine work (no request left unfinished), item budgets before any fetch,
API keys, and the server unharmed afterwards."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
import time

import httpx
import pytest
from PIL import Image

from serve_app.dev.slow_source import Trickle
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
    # Loopback is allow-listed only for the slow-source test's own server.
    config = write_local_config(work / "serve.yaml", port, {"serving": {"api_keys_env": "SERVE_APP_E2E_KEYS"},
                                                            "media": {"allow_hosts": ["127.0.0.1/32"]}})
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
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "e", "schema": {"type": "string", "pattern": "a{10000}"}}}}, "weigh 10000 grammar states"),
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


def _webp_declaring(w: int, h: int) -> str:
    """A tiny WebP whose header declares w x h (its pixels are a 64 x 48 image's)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 10)).save(buf, format="WEBP", lossless=False)
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"VP8 "
    data[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
    return "data:image/webp;base64," + base64.b64encode(bytes(data)).decode()


def test_declared_sizes_over_the_context_are_400s_before_any_decode(served_keys):
    """Four WebPs declaring 99.99 MP each (under max_image_pixels, within limit_mm_per_prompt): 4 x 1218
    tokens at local.yaml's pixel cap, more than its 4096-token context."""
    import openai

    parts = [{"type": "image_url", "image_url": {"url": _webp_declaring(16383, 6103)}} for _ in range(4)]
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError) as ei:
        _client(served_keys).chat.completions.create(model=MODEL, max_tokens=2,
                                                     messages=[{"role": "user", "content": parts}])
    took = time.monotonic() - t0
    print(f"\n4 WebPs declaring 99.99 MP: 400 in {took:.2f} s: {ei.value.body['message'][:160]}")
    assert "content[3]: the request's images and videos up to this one would take 4872 tokens" in ei.value.body["message"]
    assert took < 30  # sanity only: decoding them took minutes and GBs


def test_slow_sources_fail_fast_and_do_not_starve_a_data_uri_behind_them(served_keys):
    """24 requests whose image URL trickles one byte every 5 s fill the Preprocessor (16 ongoing in
    local.yaml); a tiny data-URI image sent behind them still gets its answer."""
    n_slow = 24
    trickle = Trickle()
    headers = {"Authorization": f"Bearer {KEY}"}

    def body(url):
        return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}]}

    async def run():
        async with httpx.AsyncClient(base_url=served_keys.base_url, headers=headers, timeout=300) as http:
            async def timed(url):
                t0 = time.monotonic()
                r = await http.post("/v1/chat/completions", json=body(url))
                return r, time.monotonic() - t0

            slow = [asyncio.ensure_future(timed(trickle.url(i))) for i in range(n_slow)]
            while trickle.started < 8:  # the slow fetches are under way
                await asyncio.sleep(0.1)
            tiny = await timed(_png())
            return tiny, await asyncio.gather(*slow)

    try:
        (tiny, tiny_s), slow = asyncio.run(run())
    finally:
        trickle.close()
    statuses = sorted({r.status_code for r, _ in slow})
    worst = max(s for _, s in slow)
    print(f"\n{n_slow} trickling sources: statuses {statuses}, slowest answered in {worst:.1f} s; "
          f"data-URI image behind them: {tiny.status_code} in {tiny_s:.1f} s")
    assert tiny.status_code == 200, tiny.text
    assert tiny.json()["usage"]["completion_tokens"] == 2
    refused = [r for r, _ in slow if r.status_code == 400]
    assert refused and all("too slow" in r.json()["error"]["message"] for r in refused), refused[0].text
    assert set(statuses) <= {400, 503}
    assert tiny_s < 120 and worst < 120  # sanity only: before the rate budget each source held a slot 60 s
