"""Shared fixtures. The end-to-end fixture runs the real thing: `serve run` on a Serve config
derived from configs/local.yaml (real Ray Serve, real HTTP on 127.0.0.1, real vLLM CPU build,
the tiny checkpoint)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Settings the vLLM CPU build needs (brief: KV cache space, no engine-core subprocess for a fast
# start); set before anything imports vLLM or starts Ray so every worker inherits them.
for _k, _v in {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)


# Modules whose tests run on the one `shared_app` of the session, in this order. They run after
# every other test, so the shared app starts once and is never up beside another module's own
# `serve run` (two Ray instances on a 2-core machine slow both). Observability first: it asserts
# exact counter values of a fresh app. The fault test last: it kills replicas.
SHARED_APP_ORDER = {
    "test_e2e_observability.py": 0,
    "test_e2e_serving.py": 1,
    "test_e2e_schemathesis.py": 2,
    "test_e2e_soak.py": 3,
    "test_e2e_faults.py": 9,
}


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)

    def rank(item) -> tuple[int, int]:
        if "shared_app" not in getattr(item, "fixturenames", ()):
            return (0, 0)
        return (1, SHARED_APP_ORDER.get(item.path.name, 5))

    items.sort(key=rank)  # stable: every module keeps its own order


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    from serve_app.dev import tiny_model

    return tiny_model.ensure()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`serve run CONFIG` in its own process group; stopped with SIGINT like a user's Ctrl-C."""

    def __init__(self, config_path: pathlib.Path, log_path: pathlib.Path, port: int, env: dict[str, str],
                 command: list[str] | None = None):
        """``command``: instead of ``serve run CONFIG`` (the config path is appended)."""
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        serve_bin = pathlib.Path(sys.executable).parent / "serve"
        self.proc = subprocess.Popen(
            [*command, str(config_path)] if command else [str(serve_bin), "run", str(config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, model: str, timeout: float = 300, headers: dict[str, str] | None = None) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.base_url}/v1/models", timeout=5, headers=headers)
                if r.status_code == 200 and r.json()["data"][0]["id"] == model:
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"serve run not ready after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        # `serve run` started a local Ray instance in its process group; leave nothing behind.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # Ray's workers run in process groups of their own, and what they start (HAProxy in
        # throughput mode) can outlive them: one was found still serving 25 min after its app
        # stopped. All of them stay in the session `serve run` leads.
        for pid in _session_members(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _session_members(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    out.append(int(entry))
            except OSError:
                pass
    return out


def write_local_config(dst: pathlib.Path, port: int, args_overrides: dict, deployments_overrides=None) -> pathlib.Path:
    cfg = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    cfg["http_options"]["port"] = port
    app = cfg["applications"][0]
    _deep_update(app["args"], args_overrides)
    for d in app["deployments"]:
        _deep_update(d, (deployments_overrides or {}).get(d["name"], {}))
    dst.write_text(yaml.safe_dump(cfg))
    return dst


def _deep_update(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("media")


def start_served(tmp_path_factory, args_overrides: dict, deployments_overrides: dict | None = None,
                 extra_env: dict[str, str] | None = None, command: list[str] | None = None):
    """`serve run` of configs/local.yaml with overrides, on a free loopback port; a generator
    for fixtures (stops the server afterwards). ``extra_env``: for `serve run` and the local Ray it
    starts (every Ray process inherits it)."""
    if shutil.which("serve", path=str(pathlib.Path(sys.executable).parent)) is None:
        pytest.skip("serve CLI not installed")
    work = tmp_path_factory.mktemp("serve")
    port = free_port()
    logs = ROOT / "build" / "test-logs"  # kept after the run (pytest prunes its tmp dirs)
    logs.mkdir(parents=True, exist_ok=True)
    config = write_local_config(work / "serve.yaml", port, args_overrides, deployments_overrides)
    # RAY_ADDRESS="local": always a fresh Ray instance, never some cluster already running here.
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS="local", **(extra_env or {}))
    proc = ServeProcess(config, logs / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log", port, env, command)
    proc.config = yaml.safe_load(config.read_text())  # what it runs with (deadlines, queue limits)
    try:
        proc.wait_ready("qwen2.5-vl-tiny")
        yield proc
    finally:
        proc.stop()


def throughput_env() -> dict[str, str]:
    """Production's Ray environment (serve_app/ray_env.py: HAProxy ingress, Serve's throughput mode),
    with HAProxy's stats/metrics listeners on free ports instead of the fixed 8404/9101, and no
    30 s drain of the ingress replicas at shutdown (Ray 2.60 holds a direct-ingress replica that
    long so a load balancer stops sending to it; nothing sends once a test is done, and every
    teardown waited for it)."""
    from serve_app.ray_env import THROUGHPUT_ENV

    return dict(THROUGHPUT_ENV, RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
                RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()),
                RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="0")


def own_direct_ingress_ports() -> dict[str, str]:
    """Throughput mode gives replicas their own HTTP/gRPC ports from fixed ranges (30000+, 40000+) that
    each Ray instance allocates without knowing the others: another Serve on this machine then holds
    the port this one's HAProxy forwards to, and answers part of these requests with its own config.
    Ranges starting at a port that was free just now keep the two apart."""
    http, grpc = free_port(), free_port()
    return {"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(min(http + 200, 65535)),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(min(grpc + 200, 65535))}


@pytest.fixture(scope="session")
def shared_app(tmp_path_factory, media_root, tiny_model_dir):
    """One app for every module in SHARED_APP_ORDER: the embedded default with a local media root
    and small engine queue limits, in the Ray environment production runs with (HAProxy in front
    of the ingress replicas), started by `python -m serve_app serve` with a metrics port.
    ``metrics_url``: its Prometheus endpoint; ``ray_tmp``: this Ray's own temp dir (replica logs)."""
    mport = free_port()
    # Short: Ray's socket paths must stay under 108 characters. Its own, so replica logs are this
    # app's alone; others' Ray instances on this machine keep theirs.
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    command = [sys.executable, "-m", "serve_app", "serve", "--metrics-port", str(mport)]
    try:
        for proc in start_served(
            tmp_path_factory,
            {"media": {"allowed_local_roots": [str(media_root)]}},
            # Small queue so the overload test can fill it; 16 ongoing still admits the concurrency test.
            {"Engine": {"max_ongoing_requests": 16, "max_queued_requests": 8}},
            extra_env={**throughput_env(), "RAY_TMPDIR": ray_tmp,
                       # Ray's node address on loopback: the fault and soak tests' driver joins
                       # this cluster, and tests talk to nothing but 127.0.0.1.
                       "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                       # a loaded 2-core box: Ray's dashboard agent can take > 30 s
                       "RAY_agent_register_timeout_ms": "180000",
                       "RAY_raylet_start_wait_time_s": "240",
                       # throughput mode buffers 1000 request-path log lines per replica
                       # (flushed on ERROR); write each at once
                       "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
                       **own_direct_ingress_ports()},
            command=command,
        ):
            proc.metrics_url = f"http://127.0.0.1:{mport}/metrics"
            proc.ray_tmp = pathlib.Path(ray_tmp)
            yield proc
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def served(shared_app):
    """The session's shared app (see `shared_app`)."""
    return shared_app


_FIGURES: list[str] = []


@pytest.fixture
def figures() -> list[str]:
    """Lines a test appends (fault, soak and fuzzing counts): printed at the end of the session,
    so CI logs show them whether the test passed or not."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
