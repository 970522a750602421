"""The ingress keeps the media path on by-reference calls (fakes for the handles, no Ray cluster).

Why it matters: with ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` (production, serve_app/ray_env.py) Serve's
default becomes by-value gRPC, under which a DeploymentResponse passed to another call is resolved in
the caller: the preprocessed pixels would come back through the ingress. By reference they go from
the preprocessor to the engine through the object store.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from serve_app.app_config import parse_app_config  # noqa: E402
from serve_app.api.ingress import Ingress  # noqa: E402
from serve_app.engine.contract import ChoiceDelta, Delta  # noqa: E402


class FakeHandle:
    def __init__(self, name: str, opts: dict | None = None) -> None:
        self.name, self.opts = name, dict(opts or {})

    def options(self, **kw) -> "FakeHandle":
        return FakeHandle(self.name, {**self.opts, **kw})


def _user_class():
    # serve.ingress wraps the user class in a subclass; the user's __init__ is the next in the MRO.
    wrapped = Ingress.func_or_class
    return next(c for c in wrapped.__mro__[1:] if c.__name__ == "Ingress" and "_request" in c.__dict__)


def _ingress():
    cls = _user_class()
    obj = object.__new__(cls)
    cls.__init__(obj, FakeHandle("pre"), FakeHandle("engine"), parse_app_config({"model": {"path": "/m"}}))
    return obj


def test_the_media_path_is_by_reference_and_only_text_goes_by_value():
    obj = _ingress()
    handles = {k: v for k, v in vars(obj).items() if isinstance(v, FakeHandle)}
    assert {h.name for h in handles.values()} == {"pre", "engine"}
    by_value = {k for k, h in handles.items() if h.opts.get("_by_reference") is not True}
    assert by_value == {"_engine_stream_text"}, by_value
    assert handles["_engine_stream_text"].opts == {"_by_reference": False, "stream": True}
    assert handles["_engine_stream"].opts == {"_by_reference": True, "stream": True}
    assert handles["_pre"].opts == {"_by_reference": True}


def test_chat_completions_picks_the_handle_by_media():
    """Drive the endpoint with fake handles: a media request must call the preprocessor and the
    by-reference engine handle; a text-only one the by-value handle."""
    import asyncio

    calls = []

    class Gen:
        def __init__(self):
            self._items = [Delta([ChoiceDelta(0, "x", 1, "length", token_ids=[5])], prompt_tokens=3, finished=True)]

        def __aiter__(self):
            return self

        async def __anext__(self):
            if not self._items:
                raise StopAsyncIteration
            return self._items.pop()

        def cancel(self):
            pass

    class Method:
        def __init__(self, handle, name):
            self.handle, self.name = handle, name

        def remote(self, *args, **kwargs):
            calls.append((self.handle.name, self.name, dict(self.handle.opts)))
            return Gen() if self.name == "generate" else object()

    class CallableHandle(FakeHandle):
        def options(self, **kw):
            return CallableHandle(self.name, {**self.opts, **kw})

        def __getattr__(self, name):
            return Method(self, name)

    cls = _user_class()
    obj = object.__new__(cls)
    cls.__init__(obj, CallableHandle("pre"), CallableHandle("engine"),
                 parse_app_config({"model": {"path": "/m"}, "engine": {"engine_kwargs": {"max_model_len": 4096}}}))

    class Raw:
        def __init__(self, body):
            self.headers, self._body = {}, body

        async def stream(self):
            yield self._body

    import json as _json

    def post(content):
        body = _json.dumps({"model": obj._model, "messages": [{"role": "user", "content": content}],
                            "max_tokens": 1}).encode()
        calls.clear()
        resp = asyncio.run(cls.chat_completions(obj, Raw(body)))
        return resp.status_code, list(calls)

    status, text_calls = post("hello")
    assert status == 200
    assert text_calls == [("engine", "generate", {"_by_reference": False, "stream": True})]
    # Over the by-value size (replica gRPC messages stop at 4 MiB) a text prompt goes by reference.
    status, big_calls = post("x" * (2 << 20))
    assert big_calls == [("engine", "generate", {"_by_reference": True, "stream": True})]
    png = "data:image/png;base64,iVBORw0KGgo="
    status, media_calls = post([{"type": "image_url", "image_url": {"url": png}}, {"type": "text", "text": "hi"}])
    assert status == 200
    assert media_calls == [("pre", "prepare", {"_by_reference": True}),
                           ("engine", "generate", {"_by_reference": True, "stream": True})]


def test_the_private_transport_option_exists_in_this_ray():
    """``transport`` relies on Serve's private ``_by_reference`` handle option (Ray 2.60): fail here,
    not in production, if a Ray upgrade drops it."""
    import inspect

    from ray.serve.handle import DeploymentHandle

    assert "_by_reference" in inspect.signature(DeploymentHandle.options).parameters


class _BroadcastHandle(FakeHandle):
    """A handle whose broadcast answers with ``answers`` (or raises ``error``), recording the call."""

    def __init__(self, name, opts=None, answers=(), error=None, log=None):
        super().__init__(name, opts)
        self.answers, self.error, self.log = list(answers), error, log if log is not None else []

    def options(self, **kw):
        return _BroadcastHandle(self.name, {**self.opts, **kw}, self.answers, self.error, self.log)

    def broadcast(self, method, *args, **kwargs):
        handle = self

        class Response:
            async def results_async(self, *, timeout_s=None, return_exceptions=False):
                handle.log.append((method, timeout_s, return_exceptions))
                if handle.error is not None:
                    raise handle.error
                return list(handle.answers)

        return Response()


def _stats(answers=(), error=None):
    import asyncio
    import json

    log = []
    cls = _user_class()
    obj = object.__new__(cls)
    cls.__init__(obj, FakeHandle("pre"), _BroadcastHandle("engine", answers=answers, error=error, log=log),
                 parse_app_config({"model": {"path": "/m"}}))

    class Raw:
        headers: dict = {}

    resp = asyncio.run(cls.stats(obj, Raw()))
    if isinstance(resp, dict):
        return 200, resp, log
    return resp.status_code, json.loads(resp.body), log


def test_stats_asks_every_engine_replica_and_adds_them_up():
    status, body, log = _stats([{"replica_id": "b", "node_id": "n2", "unfinished_requests": 2},
                                {"replica_id": "a", "node_id": "n1", "unfinished_requests": 1},
                                RuntimeError("replica gone")])
    assert status == 200 and log == [("stats", log[0][1], True)] and log[0][1] > 0
    engine = body["engine"]
    assert engine["unfinished_requests"] == 3 and engine["num_replicas"] == 2 and engine["unreachable_replicas"] == 1
    assert [r["replica_id"] for r in engine["replicas"]] == ["a", "b"]


def test_stats_without_engine_replicas_or_answers_is_an_openai_error():
    from ray.serve.exceptions import DeploymentUnavailableError

    status, body, _ = _stats(error=TimeoutError())
    assert status == 504 and body["error"]["type"] == "timeout_error"
    status, body, _ = _stats(error=DeploymentUnavailableError(None))
    assert status == 503 and "no engine replica" in body["error"]["message"]


def test_serves_broadcast_exists_in_this_ray():
    """/stats fans out with ``DeploymentHandle.broadcast`` (Ray 2.60, alpha): fail here if an upgrade drops it."""
    import inspect

    from ray.serve.handle import DeploymentBroadcastResponse, DeploymentHandle

    assert "method_name" in inspect.signature(DeploymentHandle.broadcast).parameters
    params = inspect.signature(DeploymentBroadcastResponse.results_async).parameters
    assert {"timeout_s", "return_exceptions"} <= set(params)


def test_the_context_comes_from_the_config_else_once_from_the_engine():
    import asyncio

    asked = []

    class Info:
        def remote(self):
            asked.append(1)

            async def info():
                return {"max_model_len": 8192}
            return info()

    class Engine(FakeHandle):
        def options(self, **kw):
            return Engine(self.name, {**self.opts, **kw})

        model_info = Info()

    cls = _user_class()
    obj = object.__new__(cls)
    cls.__init__(obj, FakeHandle("pre"), Engine("engine"), parse_app_config({"model": {"path": "/m"}}))
    assert [asyncio.run(obj._context()) for _ in range(3)] == [8192] * 3 and asked == [1]
    obj = object.__new__(cls)
    cls.__init__(obj, FakeHandle("pre"), Engine("engine"),
                 parse_app_config({"model": {"path": "/m"}, "engine": {"engine_kwargs": {"max_model_len": 4096}}}))
    assert asyncio.run(obj._context()) == 4096 and asked == [1]
    assert asyncio.run(obj._engine_context()) == 8192 and asked == [1, 1]  # /v1/models: the engine's, as before
