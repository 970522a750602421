"""The names vLLM's ``AsyncEngineArgs`` accepts, without importing vLLM (pure but for reading one file).

``build_app`` refuses unknown ``engine.engine_kwargs`` before any replica starts. Importing
``vllm.engine.arg_utils`` for that costs 10-70 s (torch, transformers, vLLM's platform probing) in
the process that builds the app — Serve's build task, on every deploy — so the field names are read
from vLLM's source instead: ``AsyncEngineArgs`` and the dataclasses it derives from in that module
(``EngineArgs``), every annotated class attribute a dataclass field, as ``dataclasses.fields``
would list them (checked against the imported class by the tests).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import sys


def _fields_from_source(path: pathlib.Path, name: str = "AsyncEngineArgs") -> set[str] | None:
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if name not in classes:
        return None

    def fields(cls: ast.ClassDef) -> set[str]:
        out: set[str] = set()
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                out |= fields(classes[base.id])
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                ann = ast.unparse(node.annotation)
                if not ann.startswith(("ClassVar", "typing.ClassVar")):
                    out.add(node.target.id)
        return out

    return fields(classes[name]) or None


def engine_arg_names() -> set[str] | None:
    """``AsyncEngineArgs``' field names, or None where vLLM is not installed or its source is not
    what this reader understands (the engine replica then checks the arguments itself)."""
    module = sys.modules.get("vllm.engine.arg_utils")
    if module is not None:  # already paid for
        return {f.name for f in dataclasses.fields(module.AsyncEngineArgs)}
    spec = importlib.util.find_spec("vllm")  # a top-level lookup: locates, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    return _fields_from_source(pathlib.Path(next(iter(spec.submodule_search_locations))) / "engine" / "arg_utils.py")
