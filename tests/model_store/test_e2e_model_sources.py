"""End to end on the CPU build: `serve run` with the model pulled from object storage (moto's S3
server on loopback), YaRN long context past the checkpoint's native window, and image_url.detail,
through real Serve, HTTP and vLLM with the openai client. The hub source: test_e2e_hf_source.py
(its own module, so the two servers never run at once)."""

from __future__ import annotations

import json
import os
import pathlib
import time

import openai
import pytest
import yaml

from tests.conftest import ServeProcess, free_port, throughput_env, write_local_config
from tests.test_e2e_serving import expected_prompt_tokens, image_tokens, png_data_uri
from tests.engine.test_long_context import small_window_checkpoint
from tests.model_store.test_model_store import AWS_ENV, s3_client

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
MODEL = "qwen2.5-vl-tiny"
NATIVE_WINDOW = 2048
YARN = {"mode": "yarn", "factor": 4, "original_max_position_embeddings": NATIVE_WINDOW}


def serve(tmp_path_factory, args: dict, env: dict[str, str], runtime_env_vars: dict[str, str] | None = None):
    work = tmp_path_factory.mktemp("serve")
    port = free_port()
    logs = ROOT / "build" / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    config = write_local_config(work / "serve.yaml", port, args)
    if runtime_env_vars:
        cfg = yaml.safe_load(config.read_text())
        cfg["applications"][0]["runtime_env"]["env_vars"].update(runtime_env_vars)
        config.write_text(yaml.safe_dump(cfg))
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS="local", **throughput_env(), **env)
    proc = ServeProcess(config, logs / f"serve-sources-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log", port, full_env)
    try:
        proc.wait_ready(MODEL, timeout=400)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def s3_served(tmp_path_factory, tiny_model_dir):
    """The tiny model with a 2048-token native window, in a bucket; served with YaRN ×4."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        ckpt = small_window_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt") / "q", NATIVE_WINDOW)
        s3 = s3_client(url)
        s3.create_bucket(Bucket="models")
        for p in ckpt.iterdir():
            s3.upload_file(str(p), "models", f"qwen/tiny-2k/{p.name}")
        cache = tmp_path_factory.mktemp("model-cache")
        args = {"model": {"path": "s3://models/qwen/tiny-2k", "served_name": MODEL, "long_context": YARN,
                          "download": {"endpoint_url": url, "cache_dir": str(cache)}},
                "engine": {"engine_kwargs": {"max_model_len": None}}}
        for proc in serve(tmp_path_factory, args, AWS_ENV):
            yield proc, cache
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_client_openai(s3_served):
    proc, _ = s3_served
    return openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


def long_prompt(tokenizer, n_tokens: int) -> str:
    words = [f"w{i % 97}" for i in range(n_tokens)]
    text = " ".join(words)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def test_s3_model_downloaded_once_into_the_node_cache(s3_served):
    proc, cache = s3_served
    [marker] = list(cache.rglob(".serve_app_model.json"))
    data = json.loads(marker.read_text())
    assert data["source"] == "s3://models/qwen/tiny-2k" and data["file_set"] == "all"
    assert "model.safetensors" in data["files"]


def test_yarn_serves_a_prompt_longer_than_the_native_window(s3_client_openai, tokenizer):
    text = long_prompt(tokenizer, 3 * NATIVE_WINDOW // 2)
    resp = s3_client_openai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=4, temperature=0)
    assert resp.usage.prompt_tokens > NATIVE_WINDOW
    assert resp.usage.completion_tokens == 4
    # The new window is factor × original, and it is a limit.
    with pytest.raises(openai.BadRequestError):
        s3_client_openai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long_prompt(tokenizer, 4 * NATIVE_WINDOW + 100)}],
            max_tokens=4)


@pytest.mark.parametrize("detail, grid", [(None, 32 * 32), ("auto", 32 * 32), ("high", 32 * 32), ("low", 16 * 16)])
def test_image_detail_token_counts(s3_client_openai, tokenizer, detail, grid):
    image_url = {"url": png_data_uri(896, 896)}
    if detail:
        image_url["detail"] = detail
    resp = s3_client_openai.chat.completions.create(model=MODEL, max_tokens=1, temperature=0, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": image_url}, {"type": "text", "text": "x"}]}])
    assert resp.usage.prompt_tokens == expected_prompt_tokens(tokenizer, ["image"], "x", [grid])
