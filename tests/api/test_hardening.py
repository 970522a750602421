"""Budgets before work, deadlines, cancellation and API keys (fakes for the handles; no Ray cluster)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from serve_app.api.auth import ApiKeys, load_keys
from serve_app.api.protocol import ChatCompletionRequest
from serve_app.api.request_checks import check_request
from serve_app.app_config import parse_app_config
from serve_app.errors import DeadlineExceededError, InvalidRequestError, UnauthorizedError

PNG = "data:image/png;base64,iVBORw0KGgo="
CONFIG = parse_app_config({"model": {"path": "/m", "served_name": "m"},
                           "engine": {"engine_kwargs": {"limit_mm_per_prompt": {"image": 2, "video": 1}}},
                           "media": {"image_max_pixels": 1003520}})


def _req(*parts):
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "hi"}]}]})


def test_limit_mm_per_prompt_is_a_400_before_any_fetch():
    img = {"type": "image", "image": PNG}
    vid = {"type": "video", "video": [PNG, PNG]}
    check_request(_req(img, img, vid), CONFIG)
    with pytest.raises(InvalidRequestError, match=r"content\[2\]: the request has 3 images; .* at most 2 images"):
        check_request(_req(img, img, img), CONFIG)
    with pytest.raises(InvalidRequestError, match="at most 1 video per request"):
        check_request(_req(vid, vid), CONFIG)
    # vLLM 0.32's dict form
    cfg = parse_app_config({"model": {"path": "/m", "served_name": "m"},
                            "engine": {"engine_kwargs": {"limit_mm_per_prompt": {"image": {"count": 1}}}}})
    with pytest.raises(InvalidRequestError, match="at most 1 image per"):
        check_request(_req(img, img), cfg)


def test_resized_sizes_stay_under_the_pixel_caps():
    ok = {"type": "image", "image": PNG, "resized_height": 1000, "resized_width": 1000}
    check_request(_req(ok), CONFIG)
    big = {"type": "image", "image": PNG, "resized_height": 4000, "resized_width": 3200}
    with pytest.raises(InvalidRequestError, match="12800000 pixels, more than this server's cap of 1003520"):
        check_request(_req(big), CONFIG)
    frames = {"type": "video", "video": [PNG, PNG], "resized_height": 2800, "resized_width": 2800}
    with pytest.raises(InvalidRequestError, match="for a video frame"):
        check_request(_req(frames), CONFIG)


CTX = parse_app_config({"model": {"path": "/m", "served_name": "m"},
                        "engine": {"engine_kwargs": {"max_model_len": 4096, "limit_mm_per_prompt": {"image": 4}}},
                        "media": {"image_max_pixels": 1003520}})


def _ask(*parts, **fields):
    return ChatCompletionRequest.model_validate({"model": "m", **fields, "messages": [
        {"role": "user", "content": [*parts, {"type": "text", "text": "what is in these pictures?"}]}]})


def test_media_token_budget_from_the_options_before_any_fetch():
    sized = {"type": "image", "image": PNG, "resized_height": 1000, "resized_width": 1000}  # 1296 tokens
    checked = check_request(_ask(sized, sized, sized, max_tokens=64), CTX)
    b = checked.token_budget
    assert (b.context, b.output) == (4096, 64) and 5 <= b.text <= 10 and b.media == 4096 - 64 - b.text
    with pytest.raises(InvalidRequestError, match=r"content\[3\]: the request's images and videos up to this one need "
                                                  r"at least 5184 tokens \(this one 1296\)"):
        check_request(_ask(sized, sized, sized, sized), CTX)
    with pytest.raises(InvalidRequestError, match="the answer 3000: max_tokens"):
        check_request(_ask(sized, sized, max_tokens=3000), CTX)
    frames = {"type": "video", "video": [PNG] * 768, "resized_height": 280, "resized_width": 280}
    with pytest.raises(InvalidRequestError, match="need at least 38400 tokens"):
        check_request(_ask(frames), CTX)


def test_the_text_counts_against_the_media_budget():
    long_text = {"type": "text", "text": "word " * 5000}
    with pytest.raises(InvalidRequestError, match="0 tokens left .*the text takes at least 4097, the answer at least 1[)]"):
        check_request(_ask(long_text, {"type": "image", "image": PNG}), CTX)
    assert check_request(_ask(), CTX).token_budget is None  # text only: vLLM counts it exactly
    unstated = parse_app_config({"model": {"path": "/m", "served_name": "m"}})
    assert check_request(_ask({"type": "image", "image": PNG}), unstated).token_budget is None
    assert check_request(_ask({"type": "image", "image": PNG}), unstated, context=2048).token_budget.context == 2048


def test_api_keys(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text("# ops\nk-file-1\n\nk-file-2  # rotated in\n")
    keys = ApiKeys(load_keys("MY_KEYS", str(secret), {"MY_KEYS": "k-env-1, k-env-2"}))
    assert keys.required
    for k in ("k-env-1", "k-env-2", "k-file-1", "k-file-2"):
        keys.check(f"Bearer {k}")
    keys.check("bearer k-env-1")
    for header, fragment in ((None, "missing API key"), ("Basic abc", "missing API key"), ("Bearer", "missing"),
                             ("Bearer k-env", "invalid API key"), ("Bearer k-env-1x", "invalid API key")):
        with pytest.raises(UnauthorizedError, match=fragment) as ei:
            keys.check(header)
        assert ei.value.status_code == 401 and "k-env" not in ei.value.message
        assert ei.value.to_body()["error"]["type"] == "invalid_request_error"
    open_keys = ApiKeys(load_keys("UNSET", None, {}))
    assert not open_keys.required
    open_keys.check(None)


# ---------------------------------------------------------------- the ingress with fake handles
class _Handle:
    def __init__(self, name, opts=None, log=None):
        self.name, self.opts, self.log = name, dict(opts or {}), log if log is not None else []

    def options(self, **kw):
        return _Handle(self.name, {**self.opts, **kw}, self.log)

    def __getattr__(self, method):
        handle = self

        class M:
            def remote(self, *args, **kwargs):
                return _Call(handle.name, method, handle.log)
        return M()


class _Call:
    def __init__(self, name, method, log):
        self.name, self.method, self.log = name, method, log

    def cancel(self):
        self.log.append(("cancel", self.name))

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(3600)  # a slow engine: the client gives up first


def _ingress(config):
    from serve_app.api.ingress import Ingress

    cls = next(c for c in Ingress.func_or_class.__mro__[1:] if c.__name__ == "Ingress" and "_request" in c.__dict__)
    obj = object.__new__(cls)
    log: list = []
    cls.__init__(obj, _Handle("pre", log=log), _Handle("engine", log=log), config)
    return obj, log


class _Raw:
    def __init__(self, body: dict, headers=None):
        self._body = json.dumps(body).encode()
        self.headers = {"content-length": str(len(self._body)), **(headers or {})}

    async def stream(self):
        yield self._body


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_cancels_the_media_work_too(stream):
    pytest.importorskip("ray.serve")
    obj, log = _ingress(CONFIG)
    body = {"model": "m", "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "image", "image": PNG}]}]}

    async def run():
        task = asyncio.ensure_future(obj.chat_completions(_Raw(body)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert ("cancel", "engine") in log and ("cancel", "pre") in log


def test_keys_at_the_ingress_and_one_log_line_per_refusal(monkeypatch, caplog):
    pytest.importorskip("ray.serve")
    monkeypatch.setenv("SERVE_TEST_KEYS", "sekrit-1")
    cfg = parse_app_config({"model": {"path": "/m", "served_name": "m"}, "serving": {"api_keys_env": "SERVE_TEST_KEYS"}})
    obj, _ = _ingress(cfg)
    body = {"model": "m", "messages": [{"role": "user", "content": "the prompt text"}], "stop": [""]}
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        r = asyncio.run(obj.chat_completions(_Raw(body, {"authorization": "Bearer wrong"})))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert json.loads(r.body)["error"]["message"] == "invalid API key"
        r = asyncio.run(obj.chat_completions(_Raw(body, {"authorization": "Bearer sekrit-1"})))
        assert r.status_code == 400 and "empty string" in json.loads(r.body)["error"]["message"]
        r = asyncio.run(obj.models(_Raw({})))
        assert r.status_code == 401
    lines = [rec for rec in caplog.records if rec.getMessage().startswith("refused")]
    assert len(lines) == 3 and all(rec.exc_info is None for rec in lines)
    text = "\n".join(rec.getMessage() for rec in lines)
    assert "sekrit" not in text and "wrong" not in text and "the prompt text" not in text


def test_503_carries_retry_after():
    pytest.importorskip("ray.serve")
    from serve_app.api.ingress import _error
    from serve_app.errors import OverloadedError

    r = _error(OverloadedError("the server is overloaded; retry later"))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_media_deadline_stops_the_work():
    from serve_app.media.spec import MediaSpec
    from serve_app.observability import metrics
    from serve_app.preprocess.preparer import MediaPreparer

    cfg = parse_app_config({"model": {"path": "/m"}, "media": {"prepare_timeout_s": 0.2}})
    prep = MediaPreparer.__new__(MediaPreparer)
    cancelled = []

    class SlowLoader:
        cache = type("NoCache", (), {"hits": 0, "misses": 0})()

        async def load(self, media, token_budget=None):
            try:
                await asyncio.sleep(3600)  # a source trickling one byte every 5 s
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

    prep._loader, prep._timeout_s = SlowLoader(), cfg.media.prepare_timeout_s
    prep._cache_counter = metrics.CacheCounter()
    with pytest.raises(DeadlineExceededError, match="within 0.2 s") as ei:
        asyncio.run(prep.prepare([MediaSpec("image", PNG)]))
    assert ei.value.status_code == 504 and cancelled == [True]
