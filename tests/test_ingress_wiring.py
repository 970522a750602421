"""The ingress pins its handles to by-reference calls (fakes for the handles, no Ray cluster).

Why it matters: with ``RAY_SERVE_THROUGHPUT_OPTIMIZED`` (production, serve_app/ray_env.py) Serve's
default becomes by-value gRPC, under which a DeploymentResponse passed to another call is resolved in
the caller: the preprocessed pixels would come back through the ingress. By reference they go from
the preprocessor to the engine through the object store.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from serve_app.app_config import parse_app_config  # noqa: E402
from serve_app.deployments.ingress import Ingress  # noqa: E402


class FakeHandle:
    def __init__(self, name: str, opts: dict | None = None) -> None:
        self.name, self.opts = name, dict(opts or {})

    def options(self, **kw) -> "FakeHandle":
        return FakeHandle(self.name, {**self.opts, **kw})


def _user_class():
    # serve.ingress wraps the user class in a subclass; the user's __init__ is the next in the MRO.
    wrapped = Ingress.func_or_class
    return next(c for c in wrapped.__mro__[1:] if c.__name__ == "Ingress" and "_request" in c.__dict__)


def test_every_handle_the_ingress_calls_is_by_reference():
    cls = _user_class()
    obj = object.__new__(cls)
    cls.__init__(obj, FakeHandle("pre"), FakeHandle("engine"), parse_app_config({"model": {"path": "/m"}}))
    handles = {k: v for k, v in vars(obj).items() if isinstance(v, FakeHandle)}
    assert {h.name for h in handles.values()} == {"pre", "engine"}
    for attr, h in handles.items():
        assert h.opts.get("_by_reference") is True, f"{attr} is not pinned to by-reference calls"
    assert obj._engine_stream.opts.get("stream") is True
