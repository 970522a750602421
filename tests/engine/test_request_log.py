"""The engine's one line per request (pure record; the runtime's use of it with a stand-in engine)."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import pytest

from serve_app.engine import request_log
from serve_app.engine.contract import ChoiceDelta, Delta, EngineRequest
from serve_app.engine.request_log import RequestRecord

SECRET = "zebra-secret-prompt"


def test_record_counts_tokens_and_times_from_the_engines_start():
    now = [10.0]
    rec = RequestRecord("req-1", queue_s=0.25, clock=lambda: now[0])
    now[0] = 10.5
    rec.on_delta(Delta([ChoiceDelta(0, "a", 1)], prompt_tokens=12))
    now[0] = 11.0
    rec.on_delta(Delta([ChoiceDelta(0, "bc", 2, "length"), ChoiceDelta(1, "d", 1, "stop")], prompt_tokens=12))
    rec.media_tokens = {"image": 64}
    rec.succeeded()
    assert rec.fields() == {"request_id": "req-1", "status": 200, "prompt_tokens": 12, "completion_tokens": 4,
                            "image_tokens": 64, "video_tokens": 0, "finish_reason": "length,stop",
                            "queue_s": 0.25, "ttft_s": 0.5, "total_s": 1.0}


def test_failed_and_abandoned_requests():
    rec = RequestRecord("r")
    rec.failed(400, "invalid_request_error")
    f = rec.fields()
    assert f["status"] == 400 and f["error_type"] == "invalid_request_error" and f["ttft_s"] is None
    assert RequestRecord("r").fields()["status"] == request_log.CLIENT_CLOSED


def test_log_line_names_the_request_and_carries_the_fields(caplog):
    logger = logging.getLogger("test.engine.request_log")
    rec = RequestRecord("req-9")
    rec.succeeded()
    with caplog.at_level(logging.INFO, logger=logger.name):
        request_log.log_to(logger)(rec.fields())
    (line,) = caplog.records
    assert line.getMessage().startswith("request req-9 done: status=200 prompt_tokens=0")
    assert "queue_s" not in line.getMessage()  # unknown values are left out of the text
    fields = getattr(line, request_log.EXTRA_KEY)
    assert fields["request_id"] == "req-9" and json.loads(json.dumps(fields)) == fields


class _Engine:
    """Stands in for vLLM's AsyncLLM: a few outputs, or an error, or a hang."""

    def __init__(self, outputs=(), error=None, hang=False):
        self.outputs, self.error, self.hang = list(outputs), error, hang

    async def generate(self, prompt, params, request_id):
        assert SECRET in prompt["prompt"]
        for out in self.outputs:
            yield out
        if self.error is not None:
            raise self.error
        if self.hang:
            await asyncio.sleep(3600)


def _out(token_ids, finish=None, prompt=(1, 2, 3, 7, 7)):
    comp = SimpleNamespace(index=0, text="x" * len(token_ids), token_ids=list(token_ids), finish_reason=finish,
                           logprobs=None)
    return SimpleNamespace(outputs=[comp], prompt_token_ids=list(prompt), finished=finish is not None)


def _runtime(engine):
    from serve_app.engine.runtime import EngineRuntime

    rt = EngineRuntime.__new__(EngineRuntime)
    rt.engine, rt.max_model_len, rt.default_sampling, rt._stream_interval_s = engine, 4096, {}, 0.0
    rt._render = lambda messages: messages[0]["content"]
    rt._media_token_ids = {"image": 7}
    rt.sampling_params = lambda sampling, stream: object()
    lines: list[dict] = []
    rt._request_log = lines.append
    return rt, lines


def _request(rid="req-2", stream=False):
    return EngineRequest(rid, [{"role": "user", "content": SECRET}], {}, None, stream)


def test_the_runtime_logs_each_request_once_when_it_ends():
    rt, lines = _runtime(_Engine([_out([5]), _out([6, 8], "stop")]))
    media = SimpleNamespace(vllm_inputs=lambda: {}, ready_at=None)

    async def run():
        return [d async for d in rt.generate(_request(), media)]

    assert len(asyncio.run(run())) == 2
    (line,) = lines
    assert (line["request_id"], line["status"], line["prompt_tokens"], line["completion_tokens"],
            line["image_tokens"], line["finish_reason"]) == ("req-2", 200, 5, 3, 2, "stop")
    assert SECRET not in json.dumps(line)


def test_the_runtime_logs_failures_with_their_status():
    from serve_app.errors import ServeAppError

    rt, lines = _runtime(_Engine(error=ValueError("prompt too long")))

    async def run():
        async for _ in rt.generate(_request("req-3")):
            pass

    with pytest.raises(ServeAppError):
        asyncio.run(run())
    (line,) = lines
    assert line["status"] == 400 and line["error_type"] == "invalid_request_error" and line["completion_tokens"] == 0


def test_the_runtime_logs_a_request_its_caller_abandoned():
    rt, lines = _runtime(_Engine([_out([5])], hang=True))

    async def run():
        gen = rt.generate(_request("req-4", stream=True))
        await gen.__anext__()
        task = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    (line,) = lines
    assert line["status"] == request_log.CLIENT_CLOSED and line["completion_tokens"] == 1
