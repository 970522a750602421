"""build_app's check of engine_kwargs reads vLLM's source instead of importing vLLM."""

import subprocess
import sys
import textwrap

from serve_app.engine import known_args


def test_fields_from_source_follow_bases_and_skip_classvars(tmp_path):
    src = tmp_path / "arg_utils.py"
    src.write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from typing import ClassVar
        @dataclass
        class EngineArgs:
            model: str = "m"
            max_model_len: int | None = None
            registry: ClassVar[dict] = {}
            def method(self) -> None:
                local: int = 1
        @dataclass
        class AsyncEngineArgs(EngineArgs):
            enable_log_requests: bool = False
    """))
    assert known_args._fields_from_source(src) == {"model", "max_model_len", "enable_log_requests"}
    src.write_text("class Other: pass\n")
    assert known_args._fields_from_source(src) is None
    assert known_args._fields_from_source(tmp_path / "missing.py") is None


def test_without_importing_vllm_and_the_same_names_as_the_imported_class():
    code = ("import sys, json; from serve_app.engine.known_args import engine_arg_names; n = engine_arg_names(); "
            "assert 'vllm' not in sys.modules and 'torch' not in sys.modules, 'imported'; print(json.dumps(sorted(n)))")
    import json

    from_source = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                check=True).stdout))
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs

    assert from_source == {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    assert known_args.engine_arg_names() == from_source  # the imported-module path agrees too


def test_build_app_refuses_an_unknown_engine_argument_by_name():
    import pytest

    from serve_app.app import build_app
    from serve_app.app_config import ConfigError

    with pytest.raises(ConfigError, match="unknown vLLM engine argument.*'max_model_lenn'"):
        build_app({"model": {"path": "/m"}, "engine": {"engine_kwargs": {"max_model_lenn": 8}}})
