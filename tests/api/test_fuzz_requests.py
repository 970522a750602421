"""Fuzzing request shapes (hypothesis): whatever a client sends, the ingress's pure checks answer
with a 4xx (or accept it), never an unexpected exception that would become a 500. Bounded: a fixed
number of examples, no deadline flakiness on a loaded CI machine."""

from __future__ import annotations

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from serve_app.api.protocol import ChatCompletionRequest  # noqa: E402
from serve_app.api.request_checks import check_request  # noqa: E402
from serve_app.app_config import parse_app_config  # noqa: E402
from serve_app.errors import ServeAppError, format_validation_error  # noqa: E402

CONFIG = parse_app_config({"model": {"path": "/m", "served_name": "m"},
                           "engine": {"engine_kwargs": {"max_model_len": 4096,
                                                        "limit_mm_per_prompt": {"image": 4, "video": 1}}}})
PNG = "data:image/png;base64,iVBORw0KGgo="

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["", PNG, "http://10.0.0.1/x.png", "/etc/passwd", "file:///x", "ftp://h/x"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
OPTION_KEYS = ["min_pixels", "max_pixels", "resized_height", "resized_width", "fps", "nframes", "min_frames",
               "max_frames", "total_pixels", "video_start", "video_end", "detail", "bogus"]
part_types = st.sampled_from(["text", "image_url", "image", "video_url", "video", "audio", "", None])


@st.composite
def content_parts(draw):
    t = draw(part_types)
    part = {"type": t}
    if t == "text":
        part["text"] = draw(st.one_of(st.text(max_size=30), values))
    elif t in ("image_url", "video_url"):
        part[t] = draw(st.one_of(st.fixed_dictionaries({"url": st.one_of(st.just(PNG), values)},
                                                       optional={"detail": st.sampled_from(["low", "high", "x"])}),
                                 values))
    elif t in ("image", "video"):
        part[t] = draw(st.one_of(st.just(PNG), st.lists(st.just(PNG), max_size=3), values))
    for k in draw(st.lists(st.sampled_from(OPTION_KEYS), max_size=4, unique=True)):
        part[k] = draw(st.one_of(st.integers(min_value=-10, max_value=2**40), st.floats(), values))
    return part


SAMPLING = {"max_tokens": st.integers(-5, 10**7), "min_tokens": st.integers(-5, 10**7),
            "temperature": st.floats(), "top_p": st.floats(), "top_k": st.integers(-5, 10**6),
            "seed": st.integers(-(2**70), 2**70), "n": st.integers(-1, 20), "stop": values,
            "presence_penalty": st.floats(), "repetition_penalty": st.floats(), "logprobs": values,
            "top_logprobs": st.integers(-2, 40), "response_format": values, "stream": values}


@st.composite
def bodies(draw):
    content = draw(st.one_of(st.text(max_size=10), st.lists(content_parts(), max_size=6), values))
    body = {"model": draw(st.one_of(st.just("m"), values)),
            "messages": [{"role": draw(st.sampled_from(["user", "system", "assistant", "tool"])), "content": content}]}
    for k in draw(st.lists(st.sampled_from(sorted(SAMPLING)), max_size=4, unique=True)):
        body[k] = draw(SAMPLING[k])
    return body


def _answer(body: dict) -> int:
    raw = json.dumps(body, allow_nan=True)  # the JSON parser sees NaN/Infinity literals too
    try:
        req = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        assert format_validation_error(exc)  # the ingress's 400 message; must not raise
        return 400
    try:
        check_request(req, CONFIG)
    except ServeAppError as exc:
        assert exc.status_code < 500, exc.message
        assert len(exc.message) < 2000
        return exc.status_code
    return 200


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(bodies())
def test_any_body_is_a_4xx_or_accepted(body):
    _answer(body)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.lists(content_parts(), min_size=1, max_size=8))
def test_any_content_parts_are_a_4xx_or_accepted(parts):
    _answer({"model": "m", "messages": [{"role": "user", "content": parts}]})
