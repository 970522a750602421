"""Offline validation of the cluster manifests, as strict as the API servers that will read them.

    python -m cluster.validate [FILES...]     # default: every cluster/*.yaml

* KubeRay custom resources (RayService, RayCluster, RayJob) against the CRDs' own
  ``spec.versions[].schema.openAPIV3Schema`` (``../shared/schemas/kuberay/`` beside the repo, or
  ``--schemas``). The schema is a Kubernetes *structural* schema, so it is read the way the API
  server reads it: unknown fields are errors (``kubectl apply`` validates strictly by default; the
  API server would otherwise silently drop them), ``x-kubernetes-int-or-string`` accepts both,
  ``nullable`` admits null, ``x-kubernetes-list-type: map/set`` lists must not repeat a key,
  ``format: int32/int64`` bound integers, and the CEL rules in ``x-kubernetes-validations`` that
  can be decided offline are (``self == oldSelf`` holds on create; ``self in [...]``); any other
  CEL rule is reported rather than ignored.
* Ray cluster-launcher configs against Ray's own schema (``ray/autoscaler/ray-schema.json`` of the
  installed ``ray``), then filled with the provider's defaults and checked by Ray's
  ``validate_config``, as ``ray up`` does.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import pathlib
import re
import sys
from typing import Any, Iterable, Iterator

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
KIND_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml",
              "RayJob": "ray.io_rayjobs.yaml"}
_INT_RANGES = {"int32": (-(2 ** 31), 2 ** 31 - 1), "int64": (-(2 ** 63), 2 ** 63 - 1)}
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


class SchemasMissing(FileNotFoundError):
    pass


def default_schemas_dir() -> pathlib.Path:
    """``../shared/schemas/kuberay`` relative to the repository root (CI lays shared/ beside the
    clone), overridable with ``KUBERAY_SCHEMAS``."""
    env = os.environ.get("KUBERAY_SCHEMAS")
    return pathlib.Path(env) if env else ROOT.parent / "shared" / "schemas" / "kuberay"


# ----------------------------------------------------------------------------- structural schema → JSON Schema
def _strict(node: Any) -> Any:
    """Rewrite a Kubernetes structural schema into a JSON Schema with the API server's semantics."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: (v if k in ("enum", "default", "required", "x-kubernetes-list-map-keys",
                          "x-kubernetes-validations", "properties") else _strict(v))
           for k, v in node.items()}
    if "properties" in out:  # a map of field name → schema (a field may be called "type", "items", ...)
        out["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    is_object = out.get("type") == "object" or (isinstance(out.get("type"), list) and "object" in out["type"])
    if (is_object and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _list_type(validator, value, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if value == "set":
        seen = []
        for i, item in enumerate(instance):
            if item in seen:
                yield _error(f"x-kubernetes-list-type set: item {i} repeats {item!r}")
            seen.append(item)
    elif value == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        item_props = (schema.get("items") or {}).get("properties") or {}
        seen: dict[tuple, int] = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k, (item_props.get(k) or {}).get("default")) for k in keys)
            if key in seen:
                yield _error(f"x-kubernetes-list-type map: items {seen[key]} and {i} share the key "
                             f"{dict(zip(keys, key))}")
            seen[key] = i


_CEL_IN = re.compile(r"^self in \[(.*)\]$")


def _cel(validator, rules, instance, schema):
    for rule in rules:
        expr = rule.get("rule", "").strip()
        if expr == "self == oldSelf":  # a transition rule: holds for a new object
            continue
        m = _CEL_IN.match(expr)
        if m:
            allowed = [s.strip().strip("'\"") for s in m.group(1).split(",")]
            if instance not in allowed:
                yield _error(rule.get("message") or f"{instance!r} fails CEL rule {expr}")
            continue
        yield _error(f"CEL rule {expr!r} cannot be checked offline; do not set this field, or extend "
                     "cluster/validate.py")


def _format_int(validator, fmt, instance, schema):
    if fmt in _INT_RANGES and validator.is_type(instance, "integer"):
        lo, hi = _INT_RANGES[fmt]
        if not lo <= instance <= hi:
            yield _error(f"{instance} is out of range for {fmt}")


def _error(msg: str):
    from jsonschema.exceptions import ValidationError

    return ValidationError(msg)


@functools.lru_cache(maxsize=None)
def _validator_class():
    from jsonschema import Draft7Validator, validators

    return validators.extend(Draft7Validator, {
        "x-kubernetes-list-type": _list_type,
        "x-kubernetes-validations": _cel,
        "format": _format_int,
    })


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, api_version: str, schemas_dir: str | None = None):
    """A validator for one ``kind`` at one ``apiVersion`` (``ray.io/v1``)."""
    d = pathlib.Path(schemas_dir) if schemas_dir else default_schemas_dir()
    if kind not in KIND_FILES:
        raise ValueError(f"not a KubeRay kind: {kind!r}")
    path = d / KIND_FILES[kind]
    if not path.exists():
        raise SchemasMissing(f"KubeRay CRD schema not found: {path}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are ~20k lines
    crd = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    group, _, version = api_version.partition("/")
    if group != crd["spec"]["group"]:
        raise ValueError(f"apiVersion {api_version!r}: the CRD's group is {crd['spec']['group']!r}")
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            if not v.get("served", True):
                raise ValueError(f"{kind} {api_version} is not served by this CRD")
            return _validator_class()(_strict(copy.deepcopy(v["schema"]["openAPIV3Schema"])))
    raise ValueError(f"{kind}: no version {version!r} in {path.name} "
                     f"(has {[v['name'] for v in crd['spec']['versions']]})")


def _path(err) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".") or "<root>"


def kuberay_errors(doc: dict[str, Any], schemas_dir: str | None = None) -> list[str]:
    """Every schema violation of one KubeRay object, as 'path: message'."""
    v = crd_validator(doc.get("kind"), doc.get("apiVersion"), schemas_dir)
    errors = [f"{_path(e)}: {e.message}" for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))]
    errors += _metadata_errors(doc.get("metadata") or {})
    return errors


def _metadata_errors(meta: dict[str, Any]) -> list[str]:
    errs = []
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errs.append("metadata.name: required")
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        errs.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain")
    elif len(name) > 63 - len("-serve-svc"):
        # KubeRay derives Service names (<name>-serve-svc, <name>-head-svc) that must stay <= 63.
        errs.append(f"metadata.name: {name!r} is too long for the Services KubeRay derives from it")
    for k, val in (meta.get("labels") or {}).items():
        if not isinstance(val, str) or len(val) > 63 or not _LABEL_VALUE.match(val):
            errs.append(f"metadata.labels.{k}: {val!r} is not a valid label value")
    return errs


# ----------------------------------------------------------------------------- Ray cluster launcher
def ray_cluster_schema() -> dict[str, Any]:
    import ray

    return json.loads((pathlib.Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def launcher_errors(config: dict[str, Any]) -> list[str]:
    """Violations of Ray's cluster-launcher schema, then of Ray's own ``validate_config``."""
    from jsonschema import Draft7Validator

    v = Draft7Validator(ray_cluster_schema())
    errors = [f"{_path(e)}: {e.message}" for e in v.iter_errors(config)]
    if not errors:
        # What `ray up` does before anything else: fill in the provider's defaults, validate again.
        from ray.autoscaler._private.util import prepare_config, validate_config

        try:
            validate_config(prepare_config(copy.deepcopy(config)))
        except Exception as exc:  # noqa: BLE001 - Ray raises ValueError / jsonschema errors
            errors.append(f"ray prepare_config/validate_config: {exc}")
    return errors


# ----------------------------------------------------------------------------- files
def documents(path: pathlib.Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is not None:
            yield doc


def file_errors(path: pathlib.Path, schemas_dir: str | None = None) -> list[str]:
    errors = []
    for i, doc in enumerate(documents(path)):
        where = f"{path.name}[{i}]"
        if doc.get("kind") in KIND_FILES:
            errors += [f"{where} {doc['kind']}: {e}" for e in kuberay_errors(doc, schemas_dir)]
        elif "available_node_types" in doc or "provider" in doc:
            errors += [f"{where} launcher: {e}" for e in launcher_errors(doc)]
        else:
            errors.append(f"{where}: neither a KubeRay object nor a Ray cluster-launcher config")
    return errors


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=pathlib.Path)
    p.add_argument("--schemas", default=None, help="directory of the KubeRay CRD files")
    args = p.parse_args(list(argv) if argv is not None else None)
    files = args.files or sorted((ROOT / "cluster").glob("*.yaml"))
    failed = False
    for f in files:
        errs = file_errors(f, args.schemas)
        print(f"{f}: {'ok' if not errs else f'{len(errs)} error(s)'}")
        for e in errs:
            print(f"  {e}")
        failed |= bool(errs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
