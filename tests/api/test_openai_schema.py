"""Response and chunk bodies validate against the published OpenAI types (the ``openai`` package's
pydantic models), with logprobs, n > 1 and usage; our ``token_ids`` extension is an extra field."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest

from serve_app.api.responses import ChunkStream, CompletionAccumulator
from serve_app.engine.outputs import delta_from_output

openai_chat = pytest.importorskip("openai.types.chat")


def _lp(tok, text, logprob):
    return {tok: NS(logprob=logprob, rank=1, decoded_token=text), 99: NS(logprob=-3.0, rank=2, decoded_token="alt")}


def _outputs(stream: bool):
    """Two engine steps of a request with n=2 and logprobs, as vLLM's RequestOutput looks."""
    steps = [
        [NS(index=0, text="he", token_ids=[1, 2], finish_reason=None, logprobs=[_lp(1, "h", -0.1), _lp(2, "e", -0.2)]),
         NS(index=1, text="x", token_ids=[7], finish_reason=None, logprobs=[_lp(7, "x", -0.3)])],
        [NS(index=0, text="y", token_ids=[3], finish_reason="stop", logprobs=[_lp(3, "y", -0.4)]),
         NS(index=1, text="z", token_ids=[8], finish_reason="length", logprobs=[_lp(8, "z", float("-inf"))])],
    ]
    return [delta_from_output(NS(outputs=comps, prompt_token_ids=[0] * 11, finished=i == len(steps) - 1),
                              top_logprobs=1, with_token_ids=not stream) for i, comps in enumerate(steps)]


def test_non_streaming_response_is_a_chat_completion():
    acc = CompletionAccumulator(2, want_logprobs=True)
    for d in _outputs(stream=False):
        acc.add(d)
    body = json.loads(json.dumps(acc.response(request_id="chatcmpl-1", model="m", created=1)))
    parsed = openai_chat.ChatCompletion.model_validate(body)
    assert [c.message.content for c in parsed.choices] == ["hey", "xz"]
    assert [c.finish_reason for c in parsed.choices] == ["stop", "length"]
    assert [t.token for t in parsed.choices[0].logprobs.content[0].top_logprobs] == ["h"]
    assert parsed.usage.prompt_tokens == 11 and parsed.usage.completion_tokens == 5
    assert [c["token_ids"] for c in body["choices"]] == [[1, 2, 3], [7, 8]]


def test_streamed_chunks_are_chat_completion_chunks():
    chunks = ChunkStream(request_id="chatcmpl-1", model="m", created=1, n=2, include_usage=True)
    lines = [line for d in _outputs(stream=True) for line in chunks.on_delta(d)] + list(chunks.finish())
    assert lines[-1] == "data: [DONE]\n\n"
    bodies = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    parsed = [openai_chat.ChatCompletionChunk.model_validate(b) for b in bodies]
    text = {0: "", 1: ""}
    for p in parsed:
        for c in p.choices:
            text[c.index] += c.delta.content or ""
    assert text == {0: "hey", 1: "xz"}
    assert parsed[-1].choices == [] and parsed[-1].usage.completion_tokens == 5

