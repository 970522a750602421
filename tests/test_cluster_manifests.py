"""The cluster manifests (cluster/*.yaml), offline:

* every KubeRay object validates against the KubeRay CRD schemas in ../shared/schemas/kuberay
  (strictly: unknown fields, list-map keys, int32 bounds, decidable CEL rules);
* the embedded serveConfigV2 is configs/qwen2.5-vl-72b-awq-tp4.yaml verbatim, valid for Ray's
  ServeDeploySchema and the app schema, and the committed files are exactly what
  ``python -m cluster.render`` renders (no drift);
* the groups match the engine's placement (GPUs per pod, Ray CPUs, replica bounds), the head runs
  nothing, autoscaling is on, weights come read-only from a PVC, KubeRay's probes are left alone;
* the cluster-launcher YAML validates against Ray's own schema (and ``ray up``'s checks).
"""

from __future__ import annotations

import copy
import math
import pathlib
import sys

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app_config import parse_app_config
from serve_app.engine.placement import engine_placement

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cluster import render, validate  # noqa: E402

RAYSERVICES = [ROOT / v.path for v in render.VARIANTS]
LAUNCHER = ROOT / render.LAUNCHER
PROD_CONFIG = ROOT / render.SERVE_CONFIG


@pytest.fixture(scope="module")
def schemas_dir() -> str:
    d = validate.default_schemas_dir()
    if not (d / "ray.io_rayservices.yaml").exists():
        pytest.skip(f"KubeRay CRD schemas not found at {d} (CI lays shared/ beside the clone as ../shared)")
    return str(d)


def load(path: pathlib.Path) -> dict:
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return doc


def groups(doc: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def containers(doc: dict) -> list[dict]:
    rc = doc["spec"]["rayClusterConfig"]
    pods = [rc["headGroupSpec"]["template"]] + [g["template"] for g in rc["workerGroupSpecs"]]
    return [c for p in pods for c in p["spec"]["containers"]]


def serve_app_of(doc: dict) -> dict:
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    return app


# ----------------------------------------------------------------------------- no drift
def test_manifests_are_rendered_from_configs():
    rendered = render.rendered()
    from cluster import monitoring

    assert set(rendered) == {str(p.relative_to(ROOT)) for p in RAYSERVICES + [LAUNCHER]} | set(monitoring.rendered())
    for rel, text in rendered.items():
        assert (ROOT / rel).read_text() == text, (
            f"{rel} is out of date with {render.SERVE_CONFIG}: run `python -m cluster.render` and commit")
    assert render.main(["--check"]) == 0


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_serve_config_v2_is_the_production_config(path):
    doc = load(path)
    text = doc["spec"]["serveConfigV2"]
    assert isinstance(text, str) and text == PROD_CONFIG.read_text()
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))  # what KubeRay hands `serve deploy`
    (app,) = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    cfg = parse_app_config(app.args)
    assert cfg.engine.accelerator == "GPU" and cfg.engine.placement_strategy == "STRICT_PACK"


# ----------------------------------------------------------------------------- KubeRay CRD schemas
@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_rayservice_validates_against_kuberay_crd(path, schemas_dir):
    doc = load(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    assert validate.kuberay_errors(doc, schemas_dir) == []


def test_validate_cli_passes_on_every_cluster_file(schemas_dir, capsys):
    assert validate.main(["--schemas", schemas_dir]) == 0
    out = capsys.readouterr().out
    assert all(f"{p.name}: ok" in out for p in RAYSERVICES + [LAUNCHER])


def _mutate(doc, fn):
    d = copy.deepcopy(doc)
    fn(d)
    return d


def _gpu(d):
    return groups(d)["gpu"]


@pytest.mark.parametrize("mutation, expected", [
    (lambda d: _gpu(d).update(maxReplica=3), "maxReplica"),  # typo: the API server would drop it
    (lambda d: _gpu(d)["template"]["spec"]["containers"][0].update(imagePullPolicy=1), "imagePullPolicy"),
    (lambda d: _gpu(d)["template"]["spec"]["containers"][0].update(volumeMount=[]), "volumeMount"),
    (lambda d: _gpu(d).update(minReplicas="1"), "minReplicas"),
    (lambda d: _gpu(d).update(maxReplicas=2 ** 31), "int32"),
    (lambda d: _gpu(d)["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="4 cores"), "cpu"),
    (lambda d: _gpu(d)["template"]["spec"]["containers"].append(
        copy.deepcopy(_gpu(d)["template"]["spec"]["containers"][0])), "share the key"),
    (lambda d: _gpu(d)["template"]["spec"]["containers"][0]["ports"].append({"containerPort": 8000}), "share the key"),
    (lambda d: d["spec"]["rayClusterConfig"]["autoscalerOptions"].update(upscalingMode="Fast"), "upscalingMode"),
    (lambda d: d["spec"].update(managedBy="someone"), "managedBy"),
    (lambda d: d["spec"].update(serveConfigV2={"applications": []}), "serveConfigV2"),
    (lambda d: d["spec"]["rayClusterConfig"].pop("headGroupSpec"), "headGroupSpec"),
    (lambda d: d["metadata"].update(name="Qwen_VL"), "DNS-1123"),
])
def test_the_crd_validation_is_strict(schemas_dir, mutation, expected):
    """Mistakes the API server (or kubectl's strict field validation) would reject are caught."""
    doc = _mutate(load(RAYSERVICES[0]), mutation)
    errors = validate.kuberay_errors(doc, schemas_dir)
    assert errors and any(expected in e for e in errors), errors


def test_int_or_string_quantities_accept_both(schemas_dir):
    def numbers(d):
        limits = _gpu(d)["template"]["spec"]["containers"][0]["resources"]["limits"]
        limits.update(cpu=40, memory="300G")

    assert validate.kuberay_errors(_mutate(load(RAYSERVICES[0]), numbers), schemas_dir) == []


# ----------------------------------------------------------------------------- what the groups mean
@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_head_runs_no_replicas_and_has_no_gpus(path):
    doc = load(path)
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    (c,) = head["template"]["spec"]["containers"]
    assert not any("gpu" in k for k in c["resources"]["limits"]) and not any("gpu" in k for k in c["resources"]["requests"])
    assert doc["spec"]["excludeHeadPodFromServeSvc"] is True
    assert yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]["port"] == 8000  # KubeRay's serve port


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_gpu_group_matches_the_engine_placement_group(path):
    doc = load(path)
    app = serve_app_of(doc)
    cfg = parse_app_config(app["args"])
    placement = engine_placement(cfg.engine)
    gpu = groups(doc)["gpu"]
    (c,) = gpu["template"]["spec"]["containers"]
    gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu["rayStartParams"]["num-gpus"] == str(gpus)
    per_pod = gpus // cfg.engine.world_size
    assert per_pod >= 1 and per_pod * cfg.engine.world_size == gpus, "pods hold whole STRICT_PACK groups"
    assert sum(b["GPU"] for b in placement.bundles) == cfg.engine.world_size and placement.strategy == "STRICT_PACK"
    # Ray CPUs on a GPU pod: exactly its engine groups' CPUs; the pod itself has more for vLLM.
    group_cpus = sum(b["CPU"] for b in placement.bundles)
    assert float(gpu["rayStartParams"]["num-cpus"]) == per_pod * group_cpus
    assert float(c["resources"]["limits"]["cpu"]) >= per_pod * group_cpus
    eng = next(d for d in app["deployments"] if d["name"] == "Engine")["autoscaling_config"]
    assert gpu["maxReplicas"] == math.ceil(eng["max_replicas"] / per_pod)
    assert gpu["minReplicas"] * per_pod >= eng["min_replicas"] and gpu["replicas"] == gpu["minReplicas"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/dev/shm" in mounts  # NCCL shared memory


def test_the_8gpu_variant_holds_two_tp4_replicas_per_pod():
    doc = load(ROOT / render.VARIANTS[1].path)
    gpu = groups(doc)["gpu"]
    assert gpu["rayStartParams"]["num-gpus"] == "8"
    assert parse_app_config(serve_app_of(doc)["args"]).engine.tensor_parallel_size == 4
    assert gpu["rayStartParams"]["num-cpus"] == "20"


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_cpu_group_fits_ingress_and_preprocessing(path):
    doc = load(path)
    app = serve_app_of(doc)
    cpu = groups(doc)["cpu"]
    (c,) = cpu["template"]["spec"]["containers"]
    pod_cpus = float(c["resources"]["limits"]["cpu"])
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    demand = sum(d["ray_actor_options"]["num_cpus"] * d["autoscaling_config"]["max_replicas"]
                 for d in app["deployments"] if d["name"] in ("Ingress", "Preprocessor"))
    assert cpu["maxReplicas"] * pod_cpus >= demand


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_in_tree_autoscaling_with_idle_timeouts(path):
    rc = load(path)["spec"]["rayClusterConfig"]
    assert rc["enableInTreeAutoscaling"] is True
    assert rc["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    for g in rc["workerGroupSpecs"]:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["idleTimeoutSeconds"] > 0


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_weights_come_read_only_from_a_pvc(path):
    doc = load(path)
    model_path = parse_app_config(serve_app_of(doc)["args"]).model.path
    assert model_path.startswith("/models/")
    for name in ("cpu", "gpu"):  # preprocessing reads the tokenizer, the engine the weights
        spec = groups(doc)[name]["template"]["spec"]
        vols = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/models"]
        assert mount["readOnly"] is True
        pvc = vols[mount["name"]]["persistentVolumeClaim"]
        assert pvc["readOnly"] is True and pvc["claimName"] == render.MODELS_PVC


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_probes_are_left_to_kuberay_and_versions_match(path):
    import ray

    doc = load(path)
    for c in containers(doc):
        assert "readinessProbe" not in c and "livenessProbe" not in c, "KubeRay injects the Serve-aware probes"
        assert c["image"] == render.IMAGE
    assert doc["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__ == render.RAY_VERSION


# ----------------------------------------------------------------------------- cluster launcher
def test_launcher_validates_against_rays_cluster_schema():
    cfg = load(LAUNCHER)
    assert validate.launcher_errors(cfg) == []
    broken = copy.deepcopy(cfg)
    broken["available_node_types"]["gpu"]["resources"]["GPU"] = 0.5  # Ray's schema wants integers
    broken["available_node_types"]["gpu"]["min_worker"] = 1
    errors = validate.launcher_errors(broken)
    assert any("0.5" in e for e in errors) and any("min_worker" in e for e in errors)


def test_launcher_has_the_same_node_types():
    cfg = load(LAUNCHER)
    rs = load(RAYSERVICES[0])
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])
    gpu_rs = groups(rs)["gpu"]
    assert types["gpu"]["resources"] == {"CPU": int(gpu_rs["rayStartParams"]["num-cpus"]),
                                         "GPU": int(gpu_rs["rayStartParams"]["num-gpus"])}
    assert (types["gpu"]["min_workers"], types["gpu"]["max_workers"]) == (gpu_rs["minReplicas"], gpu_rs["maxReplicas"])
    cpu_rs = groups(rs)["cpu"]
    assert (types["cpu"]["min_workers"], types["cpu"]["max_workers"]) == (cpu_rs["minReplicas"], cpu_rs["maxReplicas"])
    assert cfg["docker"]["image"] == render.IMAGE
    assert any("/models" in o and o.endswith(":ro") for o in cfg["docker"]["run_options"])


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_every_ray_container_runs_serve_in_throughput_mode(path):
    from serve_app.ray_env import THROUGHPUT_ENV

    for c in containers(load(path)):
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        assert {k: env.get(k) for k in THROUGHPUT_ENV} == THROUGHPUT_ENV, c["name"]


def test_launcher_starts_every_node_in_throughput_mode():
    from serve_app.ray_env import THROUGHPUT_ENV

    doc = load(ROOT / "cluster" / "ray-cluster-aws.yaml")
    for cmd in doc["head_start_ray_commands"][1:] + doc["worker_start_ray_commands"][1:]:
        assert all(f"{k}={v}" in cmd.split("; ray start")[0] for k, v in THROUGHPUT_ENV.items()), cmd


# ----------------------------------------------------------------------------- engine compile/JIT caches
@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.name)
def test_engine_cache_dir_is_a_node_local_volume_on_the_gpu_group_only(path):
    doc = load(path)
    cache = parse_app_config(serve_app_of(doc)["args"]).engine.cache_dir
    assert cache and cache.startswith("/")
    gpu = groups(doc)["gpu"]["template"]["spec"]
    vols = {v["name"]: v for v in gpu["volumes"]}
    (c,) = gpu["containers"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == cache]
    assert not mount.get("readOnly")
    assert vols[mount["name"]]["hostPath"] == {"path": render.ENGINE_CACHE_HOST, "type": "DirectoryOrCreate"}
    (owner,) = [i for i in gpu["initContainers"] if i["name"] == "cache-owner"]
    assert owner["command"][-1] == f"chown {render.RAY_UID_GID} {cache}"
    assert owner["securityContext"] == {"runAsUser": 0}
    # Preprocessing pods compile nothing: no cache volume there.
    cpu = groups(doc)["cpu"]["template"]["spec"]
    assert not any(m["mountPath"] == cache for m in cpu["containers"][0].get("volumeMounts", []))


def test_no_engine_cache_dir_renders_no_cache_volume():
    parts = render.engine_cache_parts(None)
    assert set(parts.values()) == {""}
    assert "engine-cache" in render.engine_cache_parts("/c")["gpu_cache_volume"]


def test_launcher_mounts_the_engine_cache_from_the_host():
    text = LAUNCHER.read_text()
    cache = parse_app_config(yaml.safe_load(PROD_CONFIG.read_text())["applications"][0]["args"]).engine.cache_dir
    doc = yaml.safe_load(text)
    assert f"-v {render.ENGINE_CACHE_HOST}:{cache}" in doc["docker"]["run_options"]
    assert any(render.ENGINE_CACHE_HOST in c and "chown" in c for c in doc["initialization_commands"])
