"""Every sampling value vLLM 0.32's SamplingParams would refuse is a 400 at the ingress's pure checks
(the batch job runs the same checks), and what the checks accept vLLM accepts too."""

from __future__ import annotations

import json

import pytest

from serve_app.api.request_checks import check_request
from serve_app.app_config import parse_app_config
from serve_app.batch.steps import validate_body
from serve_app.errors import InvalidRequestError, ServeAppError, engine_error, to_serve_error

CONFIG = parse_app_config({"model": {"path": "/m", "served_name": "m"},
                           "engine": {"engine_kwargs": {"max_model_len": 4096}}})
MSGS = [{"role": "user", "content": "hi"}]


def _check(**fields):
    from serve_app.api.protocol import ChatCompletionRequest
    from pydantic import ValidationError
    from serve_app.errors import format_validation_error

    try:
        req = ChatCompletionRequest.model_validate_json(json.dumps({"model": "m", "messages": MSGS, **fields})
                                                        if "raw" not in fields else fields["raw"])
    except ValidationError as exc:  # what the ingress does with a body that does not parse
        raise InvalidRequestError(format_validation_error(exc)) from None
    return check_request(req, CONFIG)


BAD = [
    ({"stop": ""}, "empty string"),
    ({"stop": ["x", ""]}, "empty string"),
    ({"stop": ["x" * 5000]}, "at most 1024 characters"),
    ({"stop": [str(i) for i in range(17)]}, "at most 16"),
    ({"min_tokens": 10, "max_tokens": 5}, "min_tokens (10) must be less than or equal to max_tokens (5)"),
    ({"min_tokens": 10**9}, "min_tokens = 1000000000 does not fit"),
    ({"max_tokens": 10**12}, "max_tokens = 1000000000000 does not fit"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"raw": '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "repetition_penalty": Infinity}'},
     "repetition_penalty"),
    ({"raw": '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'},
     "temperature"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "enum": [f"v{i}" for i in range(100_000)]}}}}, "this server accepts at most 32768"),
    ({"model": "x" * 1_000_000}, "is not served here"),
]


@pytest.mark.parametrize("fields, fragment", BAD, ids=[str(i) for i in range(len(BAD))])
def test_vllm_rejects_are_400s_before_any_replica(fields, fragment):
    with pytest.raises(ServeAppError) as ei:
        _check(**fields)
    assert ei.value.status_code in (400, 404)
    assert fragment in ei.value.message
    assert len(ei.value.message) < 1000, "user-supplied strings are truncated in errors"


def test_batch_gives_the_same_messages():
    with pytest.raises(InvalidRequestError, match="min_tokens \\(10\\) must be less"):
        validate_body({"model": "m", "messages": MSGS, "min_tokens": 10, "max_tokens": 5}, CONFIG)
    with pytest.raises(InvalidRequestError, match="stop cannot contain an empty string"):
        validate_body({"model": "m", "messages": MSGS, "stop": [""]}, CONFIG)


GOOD = [
    {"stop": ["a", "b"], "seed": 2**63 - 1, "min_tokens": 3, "max_tokens": 5},
    {"seed": -(2**63), "n": 2, "temperature": 0.7, "top_k": -1, "top_p": 1, "min_p": 0},
    {"presence_penalty": -2, "frequency_penalty": 2, "repetition_penalty": 1.3, "logprobs": True, "top_logprobs": 5},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
]


@pytest.mark.parametrize("fields", GOOD)
def test_what_passes_the_checks_vllm_accepts(fields):
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    sampling = dict(_check(**fields).sampling)
    structured = sampling.pop("structured_outputs", None)
    if structured:
        sampling["structured_outputs"] = StructuredOutputsParams(**structured)
    SamplingParams(**sampling)


class VLLMClientError(Exception):
    pass


class VLLMValidationError(VLLMClientError):
    pass


def test_engine_errors_carry_no_internals():
    err = engine_error(RuntimeError("CUDA error at 0x7f00deadbeef in /opt/vllm/x.py"), before_output=True)
    assert err.status_code == 500 and "0x7f" not in err.message and "RuntimeError" not in err.message
    err = to_serve_error(VLLMValidationError("stop cannot contain an empty string."))
    assert err.status_code == 500 and err.message == "internal error"
    err = engine_error(VLLMValidationError("x" * 10_000), before_output=True)
    assert err.status_code == 400 and len(err.message) < 600


def test_runtime_raises_only_our_error_types(monkeypatch):
    """Whatever vLLM raises (before or after accepting the request), the engine replica re-raises one
    of our classes, without the vLLM exception chained (Ray would ship it to the ingress)."""
    import asyncio

    from serve_app.engine.contract import EngineRequest
    from serve_app.engine.runtime import EngineRuntime

    class FakeEngine:
        async def generate(self, prompt, params, request_id):
            raise VLLMValidationError("prompt too long")
            yield  # pragma: no cover

    rt = EngineRuntime.__new__(EngineRuntime)
    rt.engine, rt.max_model_len, rt.default_sampling, rt._stream_interval_s = FakeEngine(), 4096, {}, 0.0
    rt._render = lambda messages: "p"

    async def run(sampling):
        async for _ in rt.generate(EngineRequest("r", MSGS, sampling, None, False)):
            pass

    for sampling, status in (({"max_tokens": 5}, 400), ({"stop": [""]}, 400), ({"min_tokens": 5000}, 400)):
        with pytest.raises(ServeAppError) as ei:
            asyncio.run(run(sampling))
        assert ei.value.status_code == status and type(ei.value).__module__ == "serve_app.errors"
        assert ei.value.__cause__ is None and ei.value.__context__ is None
