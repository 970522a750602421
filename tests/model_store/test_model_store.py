"""Model sources end to end on loopback: a Hugging Face hub stand-in (tests/model_store/hub_standin.py, real
HTTP, huggingface_hub as the client) and moto's S3 server (boto3 as the client), both serving the
project's tiny model. First download, a second replica waiting on the node's lock, corrupted and
missing files, resume after a kill, and an offline node with a warm cache."""

from __future__ import annotations

import json
import re
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from serve_app.app_config import ConfigError, parse_app_config
from serve_app.model_store import DownloadConfig, local_model_dir, parse_source
from serve_app.model_store.store import MARKER, ModelDownloadError
from tests.model_store.hub_standin import COMMIT, HubStandIn
from tests.model_store.loopback_proxy import ThrottlingProxy

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
REPO = "Qwen/Qwen2.5-VL-tiny"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# ------------------------------------------------------------------------------------------------
# Sources (pure)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, revision, kind, location, name", [
    ("/models/Qwen2.5-VL-72B-Instruct-AWQ", None, "local", "/models/Qwen2.5-VL-72B-Instruct-AWQ",
     "Qwen2.5-VL-72B-Instruct-AWQ"),
    ("./m/q", None, "local", "./m/q", "q"),
    ("file:///models/q/", None, "local", "/models/q/", "q"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "abc123", "hf", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    ("hf://Qwen/Qwen2.5-VL-7B-Instruct", "main", "hf", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    ("modelscope://Qwen/Qwen2.5-VL-7B-Instruct", "master", "modelscope", "Qwen/Qwen2.5-VL-7B-Instruct",
     "Qwen/Qwen2.5-VL-7B-Instruct"),
    ("s3://models/qwen/q72-awq/", None, "s3", "models/qwen/q72-awq", "q72-awq"),
])
def test_sources_parse(path, revision, kind, location, name):
    src = parse_source(path, revision)
    assert (src.kind, src.location, src.display_name) == (kind, location, name)


def test_s3_prefix_and_cache_key():
    src = parse_source("s3://models/qwen/q72-awq")
    assert (src.bucket, src.prefix) == ("models", "qwen/q72-awq/")
    # The endpoint is part of the identity: two object stores never share a cache directory.
    assert src.cache_relpath("http://a:9000") != src.cache_relpath("http://b:9000")
    assert src.cache_relpath(None).startswith("s3/models--qwen--q72-awq/latest-")


@pytest.mark.parametrize("model, needle", [
    ({"path": "Qwen/Qwen2.5-VL-7B-Instruct"}, "model.revision pinned"),
    ({"path": "/models/q", "revision": "abc"}, "hub repo ids only"),
    ({"path": "s3://models/q", "revision": "abc"}, "hub repo ids only"),
    ({"path": "s3://Bad_Bucket/q"}, "not a valid S3 bucket"),
    ({"path": "gs://b/q"}, "unknown scheme"),
    ({"path": "just-a-name"}, "not a directory"),
    ({"path": "s3://models/q", "download": {"verify": "crc"}}, "model.download.verify"),
    ({"path": "s3://models/q", "download": {"bogus": 1}}, "model.download.bogus: unknown key"),
])
def test_bad_model_sources_fail_at_build_naming_the_key(model, needle):
    with pytest.raises(ConfigError) as err:
        parse_app_config({"model": model})
    assert needle in str(err.value) and "args.model" in str(err.value)


def test_engine_kwargs_cannot_bypass_the_model_section():
    with pytest.raises(ConfigError, match="model.revision"):
        parse_app_config({"engine": {"engine_kwargs": {"revision": "x"}}})
    with pytest.raises(ConfigError, match="model.download.cache_dir"):
        parse_app_config({"engine": {"engine_kwargs": {"download_dir": "/x"}}})


def test_served_name_defaults_to_the_repo_id():
    assert parse_app_config({"model": {"path": "hf://Qwen/Qwen2.5-VL-7B-Instruct", "revision": "r"}}).model.name \
        == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert parse_app_config({"model": {"path": "s3://models/qwen/q72-awq"}}).model.name == "q72-awq"


# ------------------------------------------------------------------------------------------------
# Loopback servers
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def hf_online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 (nothing may reach a real hub); these tests talk to the
    loopback stand-in only, through an explicit endpoint."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(tiny_model_dir):
    with HubStandIn(REPO, tiny_model_dir) as h:
        yield h


@pytest.fixture(scope="module")
def moto_url():
    os.environ.update(AWS_ENV)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_client(url):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


_bucket_no = [0]


@pytest.fixture
def s3_model(moto_url, tiny_model_dir):
    """The tiny model under s3://<fresh bucket>/qwen/tiny/, the weights uploaded as a 2-part
    multipart object (so the multipart ETag check runs)."""
    from boto3.s3.transfer import TransferConfig

    _bucket_no[0] += 1
    bucket = f"models-{os.getpid()}-{_bucket_no[0]}"
    s3 = s3_client(moto_url)
    s3.create_bucket(Bucket=bucket)
    mib = 1024 * 1024
    for p in sorted(tiny_model_dir.iterdir()):
        s3.upload_file(str(p), bucket, f"qwen/tiny/{p.name}",
                       Config=TransferConfig(multipart_threshold=mib, multipart_chunksize=mib * 5 // 4 + 1))
    return f"s3://{bucket}/qwen/tiny", s3, bucket


def same_files(a: pathlib.Path, b: pathlib.Path) -> bool:
    names = sorted(p.name for p in b.iterdir() if p.is_file())
    assert names == sorted(p.name for p in a.iterdir() if p.is_file() and not p.name.startswith("."))
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


# ------------------------------------------------------------------------------------------------
# First download, warm cache, offline
# ------------------------------------------------------------------------------------------------

def test_hf_first_download_then_warm_cache_without_requests(hub, hf_online, tmp_path, tiny_model_dir):
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=hub.url)
    out = pathlib.Path(local_model_dir(f"hf://{REPO}", COMMIT, cfg))
    assert out.is_relative_to(tmp_path) and same_files(out, tiny_model_dir)
    marker = json.loads((out / MARKER).read_text())
    assert marker["commit"] == COMMIT and marker["file_set"] == "all"
    assert marker["files"]["model.safetensors"]["sha256"]  # LFS: sha256 verified
    assert marker["files"]["config.json"]["git_sha1"]  # git blob id verified
    assert hub.gets("model.safetensors") == [None]
    n = len(hub.requests)
    assert local_model_dir(f"hf://{REPO}", COMMIT, cfg) == str(out)
    assert len(hub.requests) == n  # warm: not a single request


def test_offline_node_with_warm_cache_and_cold_cache(hub, hf_online, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=hub.url)
    out = local_model_dir(REPO, COMMIT, cfg)
    hub.down = True  # the hub is unreachable, and the node is told it is offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    assert local_model_dir(REPO, COMMIT, cfg) == out
    assert len(hub.requests) == n
    with pytest.raises(ModelDownloadError, match="not in this node's cache.*HF_HUB_OFFLINE"):
        local_model_dir(REPO, "other-revision", cfg)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelDownloadError, match="not in this node's cache.*cannot be listed"):
        local_model_dir(REPO, "other-revision", cfg)


def test_s3_first_download_verifies_multipart_etag_and_works_offline(s3_model, moto_url, tmp_path, tiny_model_dir):
    uri, _, _ = s3_model
    host, port = moto_url.rsplit("//", 1)[1].split(":")
    endpoint = ThrottlingProxy((host, int(port)), bps=None)  # the object store, as this node reaches it
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=endpoint.url, workers=2)
    out = pathlib.Path(local_model_dir(uri, None, cfg))
    assert same_files(out, tiny_model_dir)
    files = json.loads((out / MARKER).read_text())["files"]
    assert files["model.safetensors"]["s3_multipart"][0].endswith("-1") and files["config.json"]["md5"]
    endpoint.close()  # the node is cut off from the object store: the warm cache needs no request
    n = len(endpoint.request_heads)
    assert local_model_dir(uri, None, cfg) == str(out)
    assert len(endpoint.request_heads) == n
    with pytest.raises(ModelDownloadError, match="not in this node's cache.*cannot be listed"):
        local_model_dir(uri + "-v2", None, cfg)


def test_tokenizer_only_for_preprocessors_then_weights_for_the_engine(hub, hf_online, tmp_path):
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=hub.url)
    tok = pathlib.Path(local_model_dir(REPO, COMMIT, cfg, file_set="tokenizer"))
    assert (tok / "tokenizer.json").is_file() and not (tok / "model.safetensors").exists()
    assert hub.gets("tokenizer.json") == [None] and hub.gets("model.safetensors") == []
    full = pathlib.Path(local_model_dir(REPO, COMMIT, cfg))
    assert full == tok and (full / "model.safetensors").is_file()
    assert hub.gets("tokenizer.json") == [None]  # kept, not fetched again
    assert local_model_dir(REPO, COMMIT, cfg, file_set="tokenizer") == str(full)


# ------------------------------------------------------------------------------------------------
# Corrupted and missing files
# ------------------------------------------------------------------------------------------------

def test_hub_serving_corrupted_bytes_is_refused_and_nothing_is_marked(hub, hf_online, tmp_path):
    hub.corrupt = {"model.safetensors"}
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=hub.url)
    with pytest.raises(ModelDownloadError, match=r"model.safetensors: sha256 \w+ != "):
        local_model_dir(REPO, COMMIT, cfg)
    assert len(hub.gets("model.safetensors")) == 2  # fetched again once before giving up
    assert not list(tmp_path.rglob(MARKER))
    assert not list(tmp_path.rglob("model.safetensors"))  # the bad file is not left for vLLM
    hub.corrupt = set()  # the source is fixed: the next start completes
    out = pathlib.Path(local_model_dir(REPO, COMMIT, cfg))
    assert (out / MARKER).is_file()
    assert len(hub.gets("config.json")) == 1  # the good files of the failed attempt were kept


def test_size_verification_only_catches_truncation_not_content(hub, hf_online, tmp_path):
    hub.corrupt = {"model.safetensors"}
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=hub.url, verify="size")
    assert local_model_dir(REPO, COMMIT, cfg)  # documented: 'size' trusts the content


def test_damaged_warm_cache_is_repaired_file_by_file(s3_model, moto_url, tmp_path, tiny_model_dir):
    uri, _, _ = s3_model
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=moto_url)
    out = pathlib.Path(local_model_dir(uri, None, cfg))
    (out / "tokenizer.json").unlink()  # missing
    with open(out / "model.safetensors", "r+b") as f:  # truncated
        f.truncate(1000)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert local_model_dir(uri, None, cfg) == str(out)
    assert same_files(out, tiny_model_dir)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert after["config.json"] == before["config.json"]  # untouched files stay
    assert after["model.safetensors"] != before["model.safetensors"]


def test_source_missing_required_files(hub, hf_online, tmp_path, s3_model, moto_url):
    hub.hide = {"config.json"}
    with pytest.raises(FileNotFoundError, match="no config.json"):
        local_model_dir(REPO, COMMIT, DownloadConfig(cache_dir=str(tmp_path), endpoint_url=hub.url))
    hub.hide = {"model.safetensors"}
    with pytest.raises(FileNotFoundError, match="no weight files"):
        local_model_dir(REPO, COMMIT, DownloadConfig(cache_dir=str(tmp_path), endpoint_url=hub.url))
    _, _, bucket = s3_model
    with pytest.raises(ModelDownloadError, match="no objects under"):
        local_model_dir(f"s3://{bucket}/nothing-here", None, DownloadConfig(cache_dir=str(tmp_path),
                                                                             endpoint_url=moto_url))


# ------------------------------------------------------------------------------------------------
# Two replicas on one node; resume after a kill (real processes)
# ------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from serve_app.model_store import DownloadConfig, local_model_dir
    path, rev, cache, endpoint = sys.argv[1:5]
    print("RESULT", local_model_dir(path, rev if rev != "-" else None,
                                    DownloadConfig(cache_dir=cache, endpoint_url=endpoint)), flush=True)
""")


def child(path, rev, cache, endpoint, log: pathlib.Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="0", SERVE_APP_DOWNLOAD_PROGRESS_S="0.5", PYTHONUNBUFFERED="1", **AWS_ENV)
    return subprocess.Popen([sys.executable, "-c", CHILD, path, rev or "-", str(cache), endpoint],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                            start_new_session=True)


def wait_for(cond, timeout=60.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def finish(proc: subprocess.Popen, log: pathlib.Path, timeout=120) -> str:
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert rc == 0, text
    return text


def test_second_replica_waits_on_the_lock_and_downloads_nothing(hub, tmp_path):
    hub.throttle_bps = 600_000  # ~3 s for the weights
    a = child(REPO, COMMIT, tmp_path / "cache", hub.url, tmp_path / "a.log")
    wait_for(lambda: hub.gets("model.safetensors"), what="replica A never started the weights")
    b = child(REPO, COMMIT, tmp_path / "cache", hub.url, tmp_path / "b.log")
    log_a, log_b = finish(a, tmp_path / "a.log"), finish(b, tmp_path / "b.log")
    assert "another process on this node is downloading it" in log_b
    assert "using the node cache" in log_b and "downloading" not in log_b.replace("is downloading", "")
    assert log_a.split("RESULT")[1] == log_b.split("RESULT")[1]
    assert hub.gets("model.safetensors") == [None]  # exactly one download on this node
    assert re.search(r"B / 1.9 MB, \d / 8 files, [\d.]+ MB/s", log_a)  # progress was logged while it ran


def test_hf_resume_after_kill_keeps_finished_files(hub, tmp_path, tiny_model_dir):
    hub.throttle_bps = 300_000
    cache = tmp_path / "cache"
    a = child(REPO, COMMIT, cache, hub.url, tmp_path / "a.log")
    # huggingface_hub writes 10 MB chunks: the tiny weights are mid-transfer while the temp file exists.
    wait_for(lambda: "got config.json" in (tmp_path / "a.log").read_text() and hub.gets("model.safetensors")
             and list(cache.rglob("*.incomplete")), what="weights never started")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    assert not list(cache.rglob(MARKER)) and not list(cache.rglob("model.safetensors"))
    hub.throttle_bps = None
    b = child(REPO, COMMIT, cache, hub.url, tmp_path / "b.log")
    out = pathlib.Path(finish(b, tmp_path / "b.log").split("RESULT ")[1].strip())
    assert same_files(out, tiny_model_dir)
    assert len(hub.gets("config.json")) == 1 and len(hub.gets("model.safetensors")) == 2
    assert not list(cache.rglob("*.incomplete"))  # the killed attempt's temp file is cleaned up


def test_s3_resume_after_kill_continues_the_partial_file(s3_model, moto_url, tmp_path, tiny_model_dir):
    uri, _, _ = s3_model
    host, port = moto_url.rsplit("//", 1)[1].split(":")
    proxy = ThrottlingProxy((host, int(port)), bps=250_000)
    try:
        cache = tmp_path / "cache"
        a = child(uri, None, cache, proxy.url, tmp_path / "a.log")
        part = lambda: [p for p in cache.rglob("model.safetensors.incomplete") if p.stat().st_size > 0]  # noqa: E731
        wait_for(part, what="no partial weights")
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
        kept = part()[0].stat().st_size
        proxy.bps = None
        b = child(uri, None, cache, proxy.url, tmp_path / "b.log")
        log_b = finish(b, tmp_path / "b.log")
        out = pathlib.Path(log_b.split("RESULT ")[1].strip())
        assert same_files(out, tiny_model_dir)
        assert "continuing at byte" in log_b
        ranged = [h for h in proxy.request_heads if "model.safetensors" in h and "range: bytes=" in h.lower()]
        assert ranged and all(int(h.lower().split("range: bytes=")[1].split("-")[0]) >= kept for h in ranged)
    finally:
        proxy.close()


# ------------------------------------------------------------------------------------------------
# The AWQ preflight runs on the downloaded files, before vLLM
# ------------------------------------------------------------------------------------------------

def test_engine_downloads_then_runs_the_awq_preflight(moto_url, tmp_path):
    from serve_app.awq.preflight import AwqShapeError
    from serve_app.engine.runtime import EngineRuntime
    from tests.engine.test_engine_preflight import CONFIG_72B_AWQ

    s3 = s3_client(moto_url)
    s3.create_bucket(Bucket="awq-models")
    s3.put_object(Bucket="awq-models", Key="q72/config.json", Body=json.dumps(CONFIG_72B_AWQ).encode())
    s3.put_object(Bucket="awq-models", Key="q72/model.safetensors", Body=b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    cfg = parse_app_config({"model": {"path": "s3://awq-models/q72", "download": {
        "cache_dir": str(tmp_path), "endpoint_url": moto_url}}, "engine": {"tensor_parallel_size": 4}})
    with pytest.raises(AwqShapeError, match="python -m serve_app.awq pad"):
        EngineRuntime(cfg)
    assert list(tmp_path.rglob(MARKER))  # downloaded and verified first


# ------------------------------------------------------------------------------------------------
# ModelScope (the modelscope client against a loopback stand-in)
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def modelscope(tiny_model_dir):
    from tests.model_store.modelscope_standin import ModelScopeStandIn

    with ModelScopeStandIn(REPO, tiny_model_dir) as ms:
        yield ms


def test_modelscope_first_download_warm_cache_and_tokenizer_subset(modelscope, tmp_path, tiny_model_dir):
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=modelscope.url)
    tok = pathlib.Path(local_model_dir(f"modelscope://{REPO}", "master", cfg, file_set="tokenizer"))
    assert not (tok / "model.safetensors").exists() and modelscope.gets("model.safetensors") == []
    out = pathlib.Path(local_model_dir(f"modelscope://{REPO}", "master", cfg))
    assert out == tok and same_files(out, tiny_model_dir)
    assert json.loads((out / MARKER).read_text())["files"]["model.safetensors"]["sha256"]
    assert modelscope.gets("model.safetensors") == [None] and len(modelscope.gets("config.json")) == 1
    n = len(modelscope.requests)
    assert local_model_dir(f"modelscope://{REPO}", "master", cfg) == str(out)
    assert len(modelscope.requests) == n


def test_modelscope_corrupted_file_is_refused(modelscope, tmp_path):
    modelscope.corrupt = {"model.safetensors"}
    cfg = DownloadConfig(cache_dir=str(tmp_path), endpoint_url=modelscope.url)
    with pytest.raises(ModelDownloadError, match="model.safetensors"):
        local_model_dir(f"modelscope://{REPO}", "master", cfg)
    assert not list(tmp_path.rglob(MARKER)) and not list(tmp_path.rglob("model.safetensors"))


def test_s3_two_part_multipart_etag_is_recomputed(moto_url, tmp_path):
    from boto3.s3.transfer import TransferConfig

    from serve_app.model_store.files import RemoteFile, hash_problem

    s3 = s3_client(moto_url)
    s3.create_bucket(Bucket="multipart")
    weights = os.urandom(6 * 1024 * 1024 + 123)
    (tmp_path / "w.safetensors").write_bytes(weights)
    s3.put_object(Bucket="multipart", Key="m/config.json", Body=b"{}")
    mib = 1024 * 1024
    s3.upload_file(str(tmp_path / "w.safetensors"), "multipart", "m/w.safetensors",
                   Config=TransferConfig(multipart_threshold=5 * mib, multipart_chunksize=5 * mib))
    cfg = DownloadConfig(cache_dir=str(tmp_path / "cache"), endpoint_url=moto_url)
    out = pathlib.Path(local_model_dir("s3://multipart/m", None, cfg))
    meta = json.loads((out / MARKER).read_text())["files"]["w.safetensors"]
    assert meta["s3_multipart"][0].endswith("-2") and meta["s3_multipart"][1] == 5 * mib
    f = RemoteFile.from_json("w.safetensors", meta)
    assert hash_problem(out, f) is None
    bad = bytearray(weights)
    bad[5 * mib + 7] ^= 1  # one bit in the second part
    (out / "w.safetensors").write_bytes(bytes(bad))
    assert "multipart ETag" in hash_problem(out, f)


def test_cli_fetch_and_verify(hub, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="0")
    run = lambda *a: subprocess.run([sys.executable, "-m", "serve_app.model_store", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, timeout=120)
    r = run("fetch", REPO, "--revision", COMMIT, "--cache-dir", str(tmp_path), "--endpoint-url", hub.url)
    assert r.returncode == 0, r.stderr
    out = pathlib.Path(r.stdout.strip())
    r = run("verify", str(out))
    assert r.returncode == 0 and "8 of 8 files match" in r.stdout
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 1  # same size: only a hash sees it
    (out / "model.safetensors").write_bytes(bytes(data))
    r = run("verify", str(out))
    assert r.returncode == 1 and "model.safetensors: sha256" in r.stdout


def test_modelscope_resume_after_kill_continues_the_partial_file(modelscope, tmp_path, tiny_model_dir):
    modelscope.throttle_bps = 300_000
    cache = tmp_path / "cache"
    a = child(f"modelscope://{REPO}", "master", cache, modelscope.url, tmp_path / "a.log")
    part = lambda: [p for p in cache.rglob("model.safetensors*.incomplete") if p.stat().st_size > 0]  # noqa: E731
    wait_for(part, what="no partial weights")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    modelscope.throttle_bps = None
    b = child(f"modelscope://{REPO}", "master", cache, modelscope.url, tmp_path / "b.log")
    out = pathlib.Path(finish(b, tmp_path / "b.log").split("RESULT ")[1].strip())
    assert same_files(out, tiny_model_dir)
    ranges = modelscope.gets("model.safetensors")
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] and ranges[1].startswith("bytes=")
