"""End to end: official `openai` client → `serve run` (real Ray Serve, HTTP on 127.0.0.1) →
preprocessing replica → vLLM CPU engine replica with the tiny Qwen2.5-VL checkpoint.

Random weights produce arbitrary (often partial UTF-8) text, so assertions are on token ids and
counts, finish reasons and the protocol shape.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_app.media import vision_math as vm
from serve_app.media.vision_math import smart_resize

pytestmark = pytest.mark.e2e
MODEL = "qwen2.5-vl-tiny"


@pytest.fixture(scope="module")
def client(served):
    import openai

    return openai.OpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aclient(served):
    import openai

    return openai.AsyncOpenAI(base_url=f"{served.base_url}/v1", api_key="unused", max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def png_data_uri(width: int, height: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def expected_prompt_tokens(tokenizer, content_kinds: list[str], text: str, grids: list[int]) -> int:
    """Tokens of the rendered chat template with one pad per media item, plus each item's
    expansion (grid tokens - 1)."""
    parts = [{"type": k} for k in content_kinds] + [{"type": "text", "text": text}]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": parts}], tokenize=False,
                                           add_generation_prompt=True)
    base = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return base + sum(g - 1 for g in grids)


image_tokens = vm.image_tokens  # the preprocessor's token budget counts with these: checked against the engine
video_tokens = vm.video_tokens


# ----------------------------------------------------------------------------- text
def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_text_non_stream_usage_matches_engine_counts(client, tokenizer):
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8, temperature=0
    )
    choice = resp.choices[0]
    token_ids = choice.model_extra["token_ids"]
    assert choice.finish_reason in ("length", "stop")
    assert resp.usage.completion_tokens == len(token_ids) and 1 <= len(token_ids) <= 8
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}], tokenize=False,
                                           add_generation_prompt=True)
    assert resp.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_stream_equals_non_stream_at_temperature_zero(client):
    msgs = [{"role": "user", "content": "Count with me: one two"}]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                          extra_body={"ignore_eos": True})
    stream = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    text, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(text) == full.choices[0].message.content
    assert finish == "length" == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == 12 == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens


def test_real_bodies_validate_against_openais_response_types(served):
    """The server's own JSON and SSE bodies (n=2, logprobs, usage, an image) parse as the ``openai``
    package's ChatCompletion / ChatCompletionChunk; each choice also carries ``token_ids``."""
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    content = [{"type": "image_url", "image_url": {"url": png_data_uri(56, 56)}}, {"type": "text", "text": "hi"}]
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "n": 2,
            "logprobs": True, "top_logprobs": 2, "ignore_eos": True}
    r = _post(served, body)
    assert r.status_code == 200, r.text
    full = ChatCompletion.model_validate(r.json())
    assert len(full.choices) == 2 and all(len(c.logprobs.content) == 4 for c in full.choices)
    assert [len(c["token_ids"]) for c in r.json()["choices"]] == [4, 4] and full.usage.completion_tokens == 8
    r = _post(served, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    lines = [line for line in r.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(line[len("data: "):])) for line in lines[:-1]]
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert {c.index for ch in chunks for c in ch.choices} == {0, 1}


def test_sampling_parameters_are_honoured(client):
    base = dict(model=MODEL, messages=[{"role": "user", "content": "seed test"}], max_tokens=6,
                extra_body={"ignore_eos": True})
    a = client.chat.completions.create(temperature=1.0, seed=1234, top_p=0.9, **base)
    b = client.chat.completions.create(temperature=1.0, seed=1234, top_p=0.9, **base)
    assert a.choices[0].model_extra["token_ids"] == b.choices[0].model_extra["token_ids"]
    n = client.chat.completions.create(n=3, temperature=1.0, seed=7, **base)
    assert [c.index for c in n.choices] == [0, 1, 2] and n.usage.completion_tokens == 18
    lp = client.chat.completions.create(logprobs=True, top_logprobs=3, temperature=0, **base)
    content = lp.choices[0].logprobs.content
    assert len(content) == 6 and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.logprob <= 0 for t in content)


def test_json_object_response_format(client):
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give JSON"}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
            "additionalProperties": False}}},
    )
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(resp.choices[0].message.content)["a"], int)
    else:  # a random model may not close the object within max_tokens; the prefix is still valid JSON
        assert resp.choices[0].message.content.lstrip().startswith("{")


# ----------------------------------------------------------------------------- images and video
@pytest.mark.parametrize("size, opts", [
    ((300, 200), {}),
    ((640, 480), {"max_pixels": 64 * 28 * 28}),
    ((90, 70), {"min_pixels": 16 * 28 * 28}),
    ((500, 500), {"resized_height": 28, "resized_width": 56}),
    # 28x28 = 1 token: below the engine-side processor's default min_pixels (3136), so this only
    # passes if the engine does not resize what the preprocessor decided.
    ((300, 200), {"min_pixels": 784, "max_pixels": 1568}),
])
def test_image_tokens_equal_smart_resize_prediction(client, tokenizer, size, opts):
    w, h = size
    part = {"type": "image_url", "image_url": {"url": png_data_uri(w, h)}, **opts}
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [part, {"type": "text", "text": "describe"}]}],
        max_tokens=2, temperature=0,
    )
    # configs/local.yaml caps media.image_max_pixels at 1280·28².
    rh, rw = vm.image_target_size(h, w, opts, max_pixels=1280 * 28 * 28)
    assert resp.usage.prompt_tokens == expected_prompt_tokens(tokenizer, ["image"], "describe",
                                                              [image_tokens(rh, rw)])


def test_two_images_in_model_card_form(client, tokenizer):
    parts = [{"type": "image", "image": png_data_uri(112, 112, 1)},
             {"type": "image", "image": png_data_uri(56, 224, 2)},
             {"type": "text", "text": "compare"}]
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}],
                                          max_tokens=3, temperature=0)
    grids = [image_tokens(*smart_resize(112, 112)), image_tokens(*smart_resize(224, 56))]
    assert resp.usage.prompt_tokens == expected_prompt_tokens(tokenizer, ["image", "image"], "compare", grids)


def _write_video(path, frames: int, fps: int, w: int, h: int) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            arr = np.full((h, w, 3), (i * 7) % 256, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_video_file_and_frame_list(client, tokenizer, media_root):
    video = media_root / "clip.mp4"
    _write_video(video, frames=40, fps=10, w=160, h=112)  # 4 s at 10 fps → 8 frames at 2 fps
    resp = client.chat.completions.create(
        model=MODEL, max_tokens=2, temperature=0,
        messages=[{"role": "user", "content": [{"type": "video", "video": str(video)},
                                               {"type": "text", "text": "what happens"}]}])
    h, w = vm.video_target_size(112, 160, 8, {})
    assert resp.usage.prompt_tokens == expected_prompt_tokens(tokenizer, ["video"], "what happens",
                                                              [video_tokens(8, h, w)])
    frames = [png_data_uri(84, 56, i) for i in range(3)]  # odd count: padded to 4
    resp2 = client.chat.completions.create(
        model=MODEL, max_tokens=2, temperature=0,
        messages=[{"role": "user", "content": [{"type": "video", "video": frames},
                                               {"type": "text", "text": "what happens"}]}])
    _, (h2, w2) = vm.frame_list_sizes(56, 84, 4, {})
    assert resp2.usage.prompt_tokens == expected_prompt_tokens(tokenizer, ["video"], "what happens",
                                                               [video_tokens(4, h2, w2)])


def test_eight_concurrent_requests_all_succeed(aclient):
    async def one(i: int):
        content = [{"type": "image_url", "image_url": {"url": png_data_uri(128, 96, i)}},
                   {"type": "text", "text": f"request {i}"}] if i % 2 else f"request {i}"
        r = await aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                                  max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
        return r.usage.completion_tokens

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10)))

    assert asyncio.run(main()) == [4] * 10


def test_client_disconnect_aborts_the_engine_request(served):
    """A long generation whose client goes away must stop in the engine, not run to the end
    (4000 tokens take the tiny CPU model over 10 s)."""
    body = {"model": MODEL, "stream": True, "max_tokens": 4000, "messages": [{"role": "user", "content": "go"}],
            "ignore_eos": True}

    def unfinished(http) -> int:
        return http.get(f"{served.base_url}/stats").json()["engine"]["unfinished_requests"]

    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{served.base_url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            events = 0
            while events < 5:
                events += next(lines).startswith("data: ")
            assert unfinished(http) == 1  # still generating
        # leaving the block closed the connection mid-stream
        t0 = time.monotonic()
        while unfinished(http) != 0 and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert unfinished(http) == 0
        assert time.monotonic() - t0 < 3, "the engine kept generating after the client left"


# ----------------------------------------------------------------------------- errors
def _post(served, body, **kw):
    return httpx.post(f"{served.base_url}/v1/chat/completions", json=body, timeout=60, **kw)


@pytest.mark.parametrize("body, status, needle", [
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}}, 400, "logit_bias"),
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "other"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, 400, "audio"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "messages[0].content[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image", "image": "/etc/passwd"}]}]}, 400, "messages[0].content[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "max"),
    # Bigger than a replica gRPC message (4 MiB): still the engine's own 400, not a transport error.
    ({"model": MODEL, "messages": [{"role": "user", "content": "ab " * (1_700_000)}]}, 400, "maximum"),
])
def test_bad_requests_get_openai_shaped_4xx(served, body, status, needle):
    r = _post(served, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["code"] == status and err["type"]


def test_bad_media_in_stream_is_a_400_not_a_broken_stream(served):
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]}]}
    r = _post(served, body)
    assert r.status_code == 400 and "messages[0].content[0]" in r.json()["error"]["message"]
    # and the replicas are still fine
    ok = _post(served, {"model": MODEL, "messages": [{"role": "user", "content": "still up?"}], "max_tokens": 2})
    assert ok.status_code == 200


def test_overload_gets_503_and_the_server_recovers(served):
    """More concurrent requests than the engine admits (16 ongoing + 8 queued in this test's
    config) are refused with an OpenAI-shaped 503, not queued without bound."""
    body = {"model": MODEL, "max_tokens": 150, "ignore_eos": True, "messages": [{"role": "user", "content": "load"}]}

    async def main():
        async with httpx.AsyncClient(timeout=180) as http:
            return await asyncio.gather(*(http.post(f"{served.base_url}/v1/chat/completions", json=body)
                                          for _ in range(40)))

    responses = asyncio.run(main())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    assert codes.count(200) >= 16
    rejected = next(r for r in responses if r.status_code == 503).json()["error"]
    assert rejected["code"] == 503 and "overloaded" in rejected["message"]
    ok = _post(served, {"model": MODEL, "messages": [{"role": "user", "content": "after"}], "max_tokens": 2})
    assert ok.status_code == 200


def test_openapi_schema_describes_the_api(served):
    spec = httpx.get(f"{served.base_url}/openapi.json", timeout=30).json()
    assert "/v1/chat/completions" in spec["paths"] and "/v1/models" in spec["paths"]
    req = spec["components"]["schemas"]["ChatCompletionRequest"]
    assert {"messages", "max_tokens", "response_format", "top_logprobs"} <= set(req["properties"])
    assert req.get("additionalProperties") is False
