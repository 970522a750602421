"""The one exception → OpenAI error mapping (serve_app.errors), used by the ingress, the engine and
the batch job."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from serve_app.engine.outputs import delta_from_output
from serve_app.errors import (
    EngineError,
    InvalidRequestError,
    OverloadedError,
    engine_error,
    to_serve_error,
)
from serve_app.media.errors import MediaError


class BackPressureError(Exception):  # the shape of ray.serve.exceptions.BackPressureError
    pass


class EngineGenerateError(Exception):  # the shape of vLLM's wrapper
    pass


def test_overload_is_503():
    err = to_serve_error(BackPressureError("queue full"))
    assert isinstance(err, OverloadedError) and err.status_code == 503


def test_media_error_behind_ray_wrapper_is_400():
    wrapped = RuntimeError("RayTaskError")
    wrapped.cause = MediaError("messages[0].content[1]: cannot decode")
    err = to_serve_error(wrapped)
    assert err.status_code == 400 and err.message == "messages[0].content[1]: cannot decode"


def test_unknown_exception_is_500_without_its_message():
    err = to_serve_error(KeyError("secret internals"))
    assert err.status_code == 500 and "secret" not in err.message


def test_engine_client_error_only_before_output():
    wrapper = EngineGenerateError("generate failed")
    wrapper.__cause__ = ValueError("prompt is longer than the maximum model length")
    assert isinstance(engine_error(wrapper, before_output=True), InvalidRequestError)
    late = engine_error(wrapper, before_output=False)
    # a 500 carries no exception class or text (the engine replica's log has them)
    assert isinstance(late, EngineError) and "ValueError" not in late.message and "prompt" not in late.message
    assert engine_error(RuntimeError("CUDA error"), before_output=True).status_code == 500
    mine = InvalidRequestError("max_tokens too large", param="max_tokens")
    assert engine_error(mine, before_output=True) is mine


def test_vllm_error_finish_reason_is_an_engine_failure():
    out = NS(outputs=[NS(index=0, text="", token_ids=[], finish_reason="error", logprobs=None)],
             prompt_token_ids=[1, 2], finished=True)
    with pytest.raises(EngineError) as ei:
        delta_from_output(out, top_logprobs=None)
    assert ei.value.status_code == 500
    assert engine_error(ei.value, before_output=False) is ei.value
