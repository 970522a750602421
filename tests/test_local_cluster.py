"""On a real two-node Ray cluster on this machine (``ray start --head`` + a worker node with a
logical GPU and the custom resource ``gpu_node``; see cluster/local_cluster.py):

* ``serve deploy configs/test-cluster.yaml`` and the endpoint answers the official openai client;
* the engine replica's placement group is STRICT_PACK with every bundle on the GPU node;
* the batch job, submitted through the Job Submission API with ``--working-dir``, writes OpenAI
  batch output (text, image, invalid line, bad media, wrong model), resumes after a simulated crash
  (pre-existing record skipped, torn last line cut off) and a rerun skips everything already done;
* under load the Preprocessor deployment scales up, and back down when the load stops.

The batch job is submitted right after ``serve deploy`` so the two engine start-ups overlap.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from serve_app.app_config import parse_app_config
from serve_app.batch.io import dumps_line, response_record
from serve_app.engine.placement import engine_placement

pytestmark = pytest.mark.cluster

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `cluster` is a top-level directory of the repo, not an installed package
from cluster.local_cluster import LocalCluster, NodeSpec, free_port  # noqa: E402

MODEL = "qwen2.5-vl-tiny"
APP = "qwen-vl"
TEST_CONFIG = ROOT / "configs" / "test-cluster.yaml"
CLIENT_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
JOB_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
LOGS = ROOT / "build" / "test-logs"


def png_uri(w: int, h: int, seed: int = 0) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _env() -> dict[str, str]:
    return dict(os.environ, **CLIENT_ENV)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ray_cluster(request, tiny_model_dir):
    if not (pathlib.Path(sys.executable).parent / "ray").exists():
        pytest.skip("ray CLI not installed beside this interpreter")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in CLIENT_ENV.items():
            mp.setenv(k, v)
        mp.delenv("RAY_ADDRESS", raising=False)
        failed_before = request.session.testsfailed
        cluster = LocalCluster(head=NodeSpec(num_cpus=2),
                               workers=[NodeSpec(num_cpus=2, num_gpus=1, resources={"gpu_node": 1})])
        cluster.start()
        try:
            yield cluster
        finally:
            if request.session.testsfailed > failed_before:
                _keep_logs(cluster)
            cluster.stop()
            left = cluster.leftovers()
            assert not left, f"processes left behind by the test cluster: {left}"


def _keep_logs(cluster: LocalCluster) -> None:
    dst = LOGS / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}"
    for d in cluster.temp_dirs:
        src = d / "session_latest" / "logs"
        if src.exists():
            shutil.copytree(src, dst / d.name, dirs_exist_ok=True, ignore_dangling_symlinks=True)
    if cluster.log_dir is not None and cluster.log_dir.exists():
        shutil.copytree(cluster.log_dir, dst / "ray-start", dirs_exist_ok=True)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster-media")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (1400, 1400, 3), dtype=np.uint8)).save(d / "big.png")
    return d


@pytest.fixture(scope="module")
def deployed(ray_cluster, media_dir, tmp_path_factory):
    """`serve deploy` of configs/test-cluster.yaml (on a free port, with a local media root)."""
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    port = free_port()
    cfg["http_options"]["port"] = port
    cfg["applications"][0]["args"]["media"]["allowed_local_roots"] = [str(media_dir)]
    path = tmp_path_factory.mktemp("serve-config") / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    serve = pathlib.Path(sys.executable).parent / "serve"
    r = subprocess.run([str(serve), "deploy", str(path), "--address", ray_cluster.dashboard_url],
                       capture_output=True, text=True, env=_env(), timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"base_url": f"http://127.0.0.1:{port}", "config": cfg}


@pytest.fixture(scope="module")
def batch_job(ray_cluster, deployed, tmp_path_factory):
    """Submitted at once (its engine starts while the Serve app starts); tests wait for it."""
    from ray.job_submission import JobSubmissionClient

    work = tmp_path_factory.mktemp("batch")
    inp, out = work / "requests.jsonl", work / "results.jsonl"

    def req(cid, content, model=MODEL, **kw):
        return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": model, "messages": [{"role": "user", "content": content}],
                                    "max_tokens": 4, "temperature": 0, **kw}})

    lines = [
        req("text-1", "Say hello"),
        req("image-1", [{"type": "image_url", "image_url": {"url": png_uri(120, 80)}},
                        {"type": "text", "text": "describe"}]),
        '{"custom_id": "broken-1", "body": {',
        req("badmedia-1", [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]),
        req("done-before-1", "already answered by an earlier run"),
        req("wrongmodel-1", "hi", model="gpt-4o"),
    ]
    inp.write_text("\n".join(lines) + "\n")
    # What an earlier run left: one finished record, then a record torn mid-write by a crash.
    seeded = dumps_line(response_record("done-before-1", 200, "chatcmpl-earlier", {"seeded": True}))
    out.write_bytes(seeded + b'{"id":"batch_req_torn","custom_id":"text-1","respo')
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    entrypoint = (f"python -m serve_app.batch --config configs/test-cluster.yaml --input {inp} --output {out} "
                  "--preprocess-workers 1 --preprocess-cpus 0.1 --progress-interval 2")
    runtime_env = {"working_dir": str(ROOT), "env_vars": JOB_ENV,
                   "excludes": [".venv/", ".stage/", "build/", ".git/", ".whl/", ".cache/", "__pycache__/"]}
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    return {"client": client, "job_id": job_id, "input": inp, "output": out, "seeded": seeded,
            "entrypoint": entrypoint, "runtime_env": runtime_env}


def wait_job(client, job_id, timeout: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            logs = client.get_job_logs(job_id)
            assert status == JobStatus.SUCCEEDED, f"job {job_id} {status}:\n{logs[-6000:]}"
            return logs
        time.sleep(2)
    client.stop_job(job_id)
    raise TimeoutError(f"job {job_id} not done after {timeout}s:\n{client.get_job_logs(job_id)[-6000:]}")


def serve_apps(dashboard_url: str) -> dict:
    import httpx

    return httpx.get(f"{dashboard_url}/api/serve/applications/", timeout=15).json()["applications"]


def wait_running(dashboard_url: str, timeout: float = 360) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            app = serve_apps(dashboard_url).get(APP)
        except Exception as exc:  # noqa: BLE001 - dashboard busy
            last = repr(exc)
            time.sleep(2)
            continue
        if app:
            last = {k: (v["status"], v.get("message", "")[:300]) for k, v in app["deployments"].items()}
            if app["status"] == "RUNNING":
                return app
            assert app["status"] != "DEPLOY_FAILED", f"deploy failed: {app.get('message')} {last}"
        time.sleep(2)
    raise TimeoutError(f"app not RUNNING after {timeout}s: {last}")


def cluster_driver(cluster: LocalCluster, code: str) -> object:
    """Run a short Ray driver against the cluster in a subprocess; returns the JSON it prints."""
    prog = ("import json, ray\n"
            f"ray.init(address={cluster.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            f"{code}\n")
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- Serve
def test_serve_deploy_answers_openai_client(ray_cluster, deployed, batch_job):
    import openai

    wait_running(ray_cluster.dashboard_url)
    client = openai.OpenAI(base_url=deployed["base_url"] + "/v1", api_key="unused", max_retries=2, timeout=120)
    assert [m.id for m in client.models.list().data] == [MODEL]
    text = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=4, temperature=0)
    assert text.choices[0].finish_reason in ("stop", "length") and 1 <= text.usage.completion_tokens <= 4
    image = client.chat.completions.create(
        model=MODEL, max_tokens=2, temperature=0,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_uri(224, 112)}},
                                               {"type": "text", "text": "what is this"}]}])
    # 224x112 → 8x4 = 32 image tokens on top of the text prompt
    assert image.usage.prompt_tokens >= text.usage.prompt_tokens + 32


def test_engine_placement_group_is_strict_pack_on_gpu_node(ray_cluster, deployed):
    wait_running(ray_cluster.dashboard_url)
    gpu_nodes = [n["node_id"] for n in ray_cluster.nodes() if n["resources_total"].get("gpu_node")]
    assert len(gpu_nodes) == 1
    table = cluster_driver(ray_cluster, "print(json.dumps(ray.util.placement_group_table()))")
    engine_pgs = [pg for pg in table.values()
                  if pg["name"].startswith(f"SERVE_REPLICA::{APP}#Engine#") and pg["state"] == "CREATED"]
    assert len(engine_pgs) == 1, table
    (pg,) = engine_pgs
    expected = engine_placement(parse_app_config(deployed["config"]["applications"][0]["args"]).engine)
    assert pg["strategy"] == "STRICT_PACK" == expected.strategy
    assert [pg["bundles"][str(i)] for i in range(len(pg["bundles"]))] == expected.bundles
    assert set(pg["bundles_to_node_id"].values()) == set(gpu_nodes)
    # ...and the Engine replica itself runs on that node.
    engine = serve_apps(ray_cluster.dashboard_url)[APP]["deployments"]["Engine"]
    assert {r["node_id"] for r in engine["replicas"] if r["state"] == "RUNNING"} == set(gpu_nodes)


# ----------------------------------------------------------------------------- batch job
def test_batch_job_output_and_resume(ray_cluster, batch_job):
    logs = wait_job(batch_job["client"], batch_job["job_id"], timeout=420)
    data = batch_job["output"].read_bytes()
    assert data.startswith(batch_job["seeded"]), "the earlier run's record must stay as it was"
    assert data.endswith(b"\n") and b"batch_req_torn" not in data
    recs = [json.loads(x) for x in data.splitlines()]
    by_id = {r["custom_id"]: r for r in recs}
    assert len(recs) == 6 and len(by_id) == 6, [r["custom_id"] for r in recs]
    for r in recs:
        assert set(r) == {"id", "custom_id", "response", "error"} and r["id"].startswith("batch_req_")
    for cid in ("text-1", "image-1"):
        resp = by_id[cid]["response"]
        body = resp["body"]
        assert resp["status_code"] == 200 and by_id[cid]["error"] is None
        assert body["object"] == "chat.completion" and body["model"] == MODEL and body["id"] == resp["request_id"]
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 1 <= body["usage"]["completion_tokens"] <= 4
    # 120x80 → 4x2 = 8 image tokens on top of a similar text prompt
    assert by_id["image-1"]["response"]["body"]["usage"]["prompt_tokens"] > \
        by_id["text-1"]["response"]["body"]["usage"]["prompt_tokens"]
    broken = by_id[None]
    assert broken["response"] is None and broken["error"]["code"] == "invalid_json" and broken["error"]["line"] == 3
    bad = by_id["badmedia-1"]["response"]
    assert bad["status_code"] == 400 and "messages[0].content[0]" in bad["body"]["error"]["message"]
    wrong = by_id["wrongmodel-1"]["response"]
    assert wrong["status_code"] == 404 and "gpt-4o" in wrong["body"]["error"]["message"]
    assert by_id["done-before-1"]["response"]["body"] == {"seeded": True}
    # what the job printed while it ran
    assert "cut off a torn last line" in logs and "already in" in logs and "to do now: 5" in logs
    assert "[batch] progress 5/5 (100.0%)" in logs and "req/s" in logs
    gpu_node = next(n["node_id"] for n in ray_cluster.nodes() if n["resources_total"].get("gpu_node"))
    assert f"engine 0 ready on node {gpu_node}" in logs, "the batch engine's placement group is on the GPU node"


def test_batch_rerun_skips_everything_done(ray_cluster, batch_job):
    wait_job(batch_job["client"], batch_job["job_id"], timeout=420)
    before = batch_job["output"].read_bytes()
    client = batch_job["client"]
    job_id = client.submit_job(entrypoint=batch_job["entrypoint"], runtime_env=batch_job["runtime_env"])
    logs = wait_job(client, job_id, timeout=180)
    assert "to do now: 0" in logs and "skipped (already in output) 6" in logs
    assert batch_job["output"].read_bytes() == before


# ----------------------------------------------------------------------------- autoscaling
def preprocessor_state(dashboard_url: str) -> tuple[int, int, int]:
    """(RUNNING replicas, replicas starting or running, the autoscaler's target)."""
    d = serve_apps(dashboard_url)[APP]["deployments"]["Preprocessor"]
    states = [r["state"] for r in d.get("replicas", [])]
    live = sum(1 for st in states if st in ("RUNNING", "STARTING", "UPDATING", "RECOVERING"))
    return states.count("RUNNING"), live, d.get("target_num_replicas") or 0


def test_preprocessor_autoscales_up_and_back_down(ray_cluster, deployed, media_dir):
    import httpx

    wait_running(ray_cluster.dashboard_url)
    cfg = deployed["config"]["applications"][0]
    pre = next(d for d in cfg["deployments"] if d["name"] == "Preprocessor")["autoscaling_config"]
    lo, hi = pre["min_replicas"], pre["max_replicas"]
    deadline = time.monotonic() + 30  # settled at min_replicas before the load starts
    while preprocessor_state(ray_cluster.dashboard_url) != (lo, lo, lo) and time.monotonic() < deadline:
        time.sleep(1)
    assert preprocessor_state(ray_cluster.dashboard_url) == (lo, lo, lo)
    body = {"model": MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": [{"type": "image", "image": str(media_dir / "big.png")},
                                                      {"type": "text", "text": "hi"}]}]}
    history: list[tuple] = []

    async def load(seconds: float, concurrency: int) -> int:
        """Image requests (every one decodes a 1400x1400 PNG: the test config turns the media cache
        off) until the Preprocessor runs `hi` replicas or time is up."""
        stop = time.monotonic() + seconds
        done = 0
        scaled = asyncio.Event()

        async def user(c):
            nonlocal done
            while time.monotonic() < stop and not scaled.is_set():
                r = await c.post(f"{deployed['base_url']}/v1/chat/completions", json=body, timeout=60)
                assert r.status_code == 200, r.text
                done += 1

        async def watch():
            t0 = time.monotonic()
            while time.monotonic() < stop and not scaled.is_set():
                state = await asyncio.to_thread(preprocessor_state, ray_cluster.dashboard_url)
                history.append((round(time.monotonic() - t0, 1), *state))
                if state[0] >= hi:  # the new replicas are up and serving
                    scaled.set()
                await asyncio.sleep(1)

        async with httpx.AsyncClient() as c:
            await asyncio.gather(watch(), *(user(c) for _ in range(concurrency)))
        return done

    sent = asyncio.run(load(seconds=60, concurrency=8))
    assert sent > 0
    # Scaled up: the autoscaler asked for `hi` replicas and started them. (On a loaded 2-core
    # machine a replica can take most of a minute to import its libraries, so RUNNING is seen
    # within the load window on a quiet machine, STARTING at least on a busy one.)
    assert max(h[3] for h in history) == hi and max(h[2] for h in history) == hi, \
        f"Preprocessor did not scale up to {hi} (t, running, live, target): {history}"
    # Load stopped: back down to min_replicas after downscale_delay_s.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = preprocessor_state(ray_cluster.dashboard_url)
        history.append(("after", *state))
        if state == (lo, lo, lo):
            break
        time.sleep(1)
    assert preprocessor_state(ray_cluster.dashboard_url) == (lo, lo, lo), f"did not scale back down: {history}"
