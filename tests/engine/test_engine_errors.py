"""Which engine failures are the client's fault (pure; vLLM's exception classes by shape)."""

from __future__ import annotations

from serve_app.errors import is_client_error


class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError):
    pass


class VLLMServerError(VLLMError):
    pass


def test_value_errors_and_vllm_client_errors_are_the_clients():
    assert is_client_error(ValueError("prompt too long"))
    assert is_client_error(VLLMValidationError("maximum context length is 4096 tokens"))
    assert not is_client_error(VLLMServerError("boom"))
    assert not is_client_error(RuntimeError("CUDA error"))


def test_real_vllm_validation_error_when_installed():
    import pytest

    exceptions = pytest.importorskip("vllm.exceptions")
    assert is_client_error(exceptions.VLLMValidationError("too long", parameter="input_text"))
