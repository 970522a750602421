"""The RayService that pulls the 72B-AWQ from object storage into a node-local cache: rendered from
its Serve config, valid against the KubeRay CRDs, and wired the way the model store needs."""

from __future__ import annotations

import pathlib

import yaml

import pytest

from cluster import object_storage, render, validate
from serve_app.app_config import parse_app_config
from serve_app.model_store import parse_source

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATH = ROOT / object_storage.PATH


@pytest.fixture(scope="module")
def schemas_dir() -> str:
    d = validate.default_schemas_dir()
    if not (d / "ray.io_rayservices.yaml").exists():
        pytest.skip(f"KubeRay CRD schemas not found at {d} (CI lays shared/ beside the clone as ../shared)")
    return str(d)


def load():
    return yaml.safe_load(PATH.read_text())


def groups(doc):
    return {g["groupName"]: g for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def test_rendered_from_its_serve_config():
    assert PATH.read_text() == object_storage.render_object_storage(), \
        "run `python -m cluster.object_storage` and commit"
    assert object_storage.main(["--check"]) == 0
    doc = load()
    assert doc["spec"]["serveConfigV2"] == (ROOT / object_storage.SERVE_CONFIG).read_text()


def test_validates_against_kuberay_crd(schemas_dir):
    assert validate.kuberay_errors(load(), schemas_dir) == []


def test_weights_come_from_object_storage_into_a_node_local_cache():
    doc = load()
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    cfg = parse_app_config(app["args"])
    assert parse_source(cfg.model.path).kind == "s3"
    assert cfg.engine.tensor_parallel_size == 4 and cfg.engine.awq_preflight
    cache = cfg.model.download.cache_dir
    for name in ("cpu", "gpu"):  # preprocessing fetches the tokenizer, the engine everything
        spec = groups(doc)[name]["template"]["spec"]
        vols = {v["name"]: v for v in spec["volumes"]}
        assert not any("persistentVolumeClaim" in v for v in vols.values())
        (c,) = spec["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache]
        assert not mount.get("readOnly") and vols[mount["name"]]["hostPath"]["path"] == object_storage.HOST_CACHE
        assert {"secretRef": {"name": object_storage.SECRET, "optional": True}} in c["envFrom"]
        (init,) = [i for i in spec["initContainers"] if i["name"] == "model-cache-owner"]
        assert init["image"] == render.IMAGE and cache in " ".join(init["command"])
        assert [m["mountPath"] for m in init["volumeMounts"]] == [cache]
    # Same cluster shape as the PVC variant.
    pvc = yaml.safe_load((ROOT / render.VARIANTS[0].path).read_text())
    for name in ("cpu", "gpu"):
        assert groups(doc)[name]["rayStartParams"] == groups(pvc)[name]["rayStartParams"]
        assert groups(doc)[name]["maxReplicas"] == groups(pvc)[name]["maxReplicas"]
