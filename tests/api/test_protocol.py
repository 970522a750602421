"""Request validation, sampling mapping, chat planning and response assembly (pure)."""

from types import SimpleNamespace as NS

import pytest
from pydantic import ValidationError

from serve_app.app_config import ServingSection
from serve_app.api.chat import plan_chat
from serve_app.errors import InvalidRequestError
from serve_app.engine.outputs import delta_from_output
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.errors import format_validation_error
from serve_app.api.responses import ChunkStream, CompletionAccumulator
from serve_app.api.sampling import sampling_kwargs


def req(**kw):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}
    return ChatCompletionRequest.model_validate(body)


def error_of(**kw) -> str:
    with pytest.raises(ValidationError) as e:
        req(**kw)
    return format_validation_error(e.value)


def test_unsupported_fields_are_named():
    assert "logit_bias: unsupported field" in error_of(logit_bias={"1": 1})
    assert "tools: unsupported field" in error_of(tools=[])
    msg = error_of(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"},
                                                              "zoom": 2}]}])
    assert "messages[0].content[0].zoom: unsupported field" in msg


def test_consistency_rules():
    assert "top_logprobs requires logprobs" in error_of(top_logprobs=2)
    assert "stream_options is only allowed" in error_of(stream_options={"include_usage": True})
    assert "disagree" in error_of(max_tokens=3, max_completion_tokens=4)
    assert "less than or equal to 2" in error_of(temperature=3)
    assert "images and videos are accepted in user messages only" in error_of(
        messages=[{"role": "system", "content": [{"type": "image", "image": "x"}]}])
    assert "detail" in error_of(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x", "detail": "ultra"}}]}])


def test_sampling_kwargs_only_what_was_set():
    s = sampling_kwargs(req(), ServingSection())
    assert s == {"n": 1, "max_tokens": None}
    s = sampling_kwargs(req(max_completion_tokens=7, temperature=0.5, top_k=5, stop="x", seed=3, logprobs=True,
                            top_logprobs=2, ignore_eos=True, repetition_penalty=1.1), ServingSection())
    assert s == {"n": 1, "max_tokens": 7, "temperature": 0.5, "top_k": 5, "stop": ["x"], "seed": 3,
                 "logprobs": 2, "ignore_eos": True, "repetition_penalty": 1.1}
    assert sampling_kwargs(req(max_tokens=9), ServingSection())["max_tokens"] == 9


def test_response_format_maps_to_structured_outputs():
    s = sampling_kwargs(req(response_format={"type": "json_object"}), ServingSection())
    assert s["structured_outputs"] == {"json_object": True}
    schema = {"type": "object"}
    s = sampling_kwargs(req(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}),
                        ServingSection())
    assert s["structured_outputs"] == {"json": schema}
    assert "structured_outputs" not in sampling_kwargs(req(response_format={"type": "text"}), ServingSection())


def test_server_limits():
    with pytest.raises(InvalidRequestError, match="n = 9 exceeds"):
        sampling_kwargs(req(n=9), ServingSection(max_n=8))
    with pytest.raises(InvalidRequestError, match="top_logprobs = 5 exceeds"):
        sampling_kwargs(req(logprobs=True, top_logprobs=5), ServingSection(max_top_logprobs=4))


def test_plan_chat_orders_media_and_names_parts():
    r = req(messages=[
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "data:x"}, "max_pixels": 1000},
            {"type": "video", "video": ["f1", "f2"], "fps": 1.0},
            {"type": "image", "image": "/p.png", "resized_height": 56, "resized_width": 56},
        ]},
    ])
    plan = plan_chat(r.messages)
    assert plan.template_messages[0] == {"role": "system", "content": "sys"}
    assert plan.template_messages[1]["content"] == [{"type": "text", "text": "a"}, {"type": "image"},
                                                   {"type": "video"}, {"type": "image"}]
    assert [(m.kind, m.where) for m in plan.media] == [
        ("image", "messages[1].content[1]"), ("video", "messages[1].content[2]"), ("image", "messages[1].content[3]")]
    assert plan.media[0].options == {"max_pixels": 1000}
    assert plan.media[1].source == ["f1", "f2"] and plan.media[1].options == {"fps": 1.0}
    assert plan.media[2].options == {"resized_height": 56, "resized_width": 56}
    with pytest.raises(InvalidRequestError, match="at most 2"):
        plan_chat(r.messages, max_media_items=2)


def _out(texts, tokens, finished, reason=None, prompt=5):
    comps = [NS(index=i, text=t, token_ids=tok, finish_reason=reason, logprobs=None)
             for i, (t, tok) in enumerate(zip(texts, tokens))]
    return NS(outputs=comps, prompt_token_ids=list(range(prompt)), finished=finished)


def test_accumulate_deltas_into_response():
    acc = CompletionAccumulator(n=2, want_logprobs=False)
    acc.add(delta_from_output(_out(["a", "x"], [[1], [7]], False), top_logprobs=None))
    acc.add(delta_from_output(_out(["b", "y"], [[2, 3], [8]], True, "length"), top_logprobs=None))
    resp = acc.response(request_id="r", model="m", created=1)
    assert [c["message"]["content"] for c in resp["choices"]] == ["ab", "xy"]
    assert resp["choices"][0]["token_ids"] == [1, 2, 3] and resp["choices"][1]["finish_reason"] == "length"
    assert resp["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


def test_logprobs_keep_top_k_by_rank():
    lp = {5: NS(logprob=-0.1, rank=1, decoded_token="a"), 6: NS(logprob=-2.0, rank=2, decoded_token="b"),
          9: NS(logprob=-7.0, rank=40, decoded_token="z")}
    out = NS(outputs=[NS(index=0, text="z", token_ids=[9], finish_reason=None, logprobs=[lp])],
             prompt_token_ids=[1], finished=False)
    d = delta_from_output(out, top_logprobs=2)
    entry = d.choices[0].logprobs[0]
    assert entry["token"] == "z" and entry["logprob"] == -7.0
    assert [t["token"] for t in entry["top_logprobs"]] == ["a", "b"]


def test_chunk_stream_role_content_finish_usage_done():
    cs = ChunkStream(request_id="r", model="m", created=1, n=1, include_usage=True)
    lines = list(cs.on_delta(delta_from_output(_out(["he"], [[1, 2]], False), top_logprobs=None)))
    lines += list(cs.on_delta(delta_from_output(_out(["y"], [[3]], True, "stop"), top_logprobs=None)))
    lines += list(cs.finish())
    import json

    events = [json.loads(l[6:]) for l in lines[:-1]]
    assert lines[-1] == "data: [DONE]\n\n"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1]) == "hey"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
