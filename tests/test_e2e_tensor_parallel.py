"""TP=2 for real on vLLM's CPU build, through Serve: the engine replica runs two tensor-parallel
workers (vLLM's CPU build has no Ray executor, so they are worker subprocesses of the replica, and
the replica's placement group holds their CPUs)."""

import pytest

from tests.conftest import start_served

pytestmark = pytest.mark.e2e
MODEL = "qwen2.5-vl-tiny"


@pytest.fixture(scope="module")
def served_tp2(tmp_path_factory, tiny_model_dir):
    yield from start_served(
        tmp_path_factory,
        {"engine": {"tensor_parallel_size": 2, "replica_cpus": 0.25, "worker_cpus": 0.5}},
    )


def test_tp2_engine_serves_text_and_images(served_tp2):
    import openai

    from tests.test_e2e_serving import png_data_uri

    client = openai.OpenAI(base_url=f"{served_tp2.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=6,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 6 and len(r.choices[0].model_extra["token_ids"]) == 6
    r2 = client.chat.completions.create(model=MODEL, max_tokens=2, temperature=0, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(112, 84)}}, {"type": "text", "text": "what"}]}])
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens  # the image expanded into tokens
