"""The two servers under test, built from ONE set of engine arguments.

The shared engine arguments are what :func:`serve_app.engine.args.build_engine_kwargs` makes of the
bench's Serve config (the app's own code path, so ``mm_processor_kwargs`` etc. are exactly the app's);
``vllm serve`` gets the same dict as command-line flags. Both run in their own process group with a
unique marker in their environment; stopping sends SIGINT, then SIGKILL, to the group, then to any
process still carrying the marker (Ray or vLLM helpers that might have left the group).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# vLLM engine kwargs the vllm serve CLI gets elsewhere (explicit flags) or that equal its defaults.
_CLI_SKIP = {"model", "served_model_name", "tensor_parallel_size", "pipeline_parallel_size",
             "distributed_executor_backend", "enable_log_requests", "disable_log_stats"}
# Same values as vllm serve's own defaults (the app sets them explicitly): checked, not passed.
_CLI_DEFAULTS = {"enable_log_requests": False, "disable_log_stats": False}

MARKER_ENV = "SERVE_BENCH_RUN"


@dataclass
class BenchSettings:
    device: str  # "gpu" | "cpu"
    model_dir: str
    served_name: str = "bench-model"
    tensor_parallel_size: int = 1
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    seed: int = 0
    limit_images: int = 4
    limit_videos: int = 1
    video_frames: int = 8  # what the app samples from a 4 s clip at 2 fps; vllm serve is told the same
    image_max_pixels: int | None = None  # None: the app's default (Qwen2.5-VL's 12845056); CPU: 1280*28*28
    extra_engine_kwargs: dict[str, Any] | None = None
    preprocessor_replicas: int | None = None
    preprocessor_cpus: float | None = None
    ingress_replicas: int | None = None
    max_concurrency: int = 64
    allreduce_fusion: str = "off"
    cache_dir: str | None = None  # the app's engine.cache_dir; vllm serve gets the same variables

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"


def base_env(settings: BenchSettings, cache_dir: Path | None) -> dict[str, str]:
    """Environment for both servers (and, through runtime_env, the Serve replicas)."""
    env = {
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if settings.cpu:
        env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    # What an app engine replica sets for itself (allreduce backend, variables its vLLM workers must
    # get); vllm serve gets the same, so both run the same multi-GPU setup.
    from serve_app.app_config import parse_app_config
    from serve_app.engine.parallel_env import engine_environment

    # With a cache dir: every cache under <cache_dir>/<key>/ (serve_app/engine/cache_env.py), the
    # same variables an app engine replica with engine.cache_dir sets for itself.
    if cache_dir is not None:
        settings = dataclasses.replace(settings, cache_dir=str(cache_dir))
    env.update(engine_environment(parse_app_config(app_args(settings)).engine, os.environ))
    return env


def app_args(settings: BenchSettings) -> dict[str, Any]:
    """The Serve application's ``args:`` (validated by serve_app.app_config)."""
    engine_kwargs: dict[str, Any] = {
        "max_model_len": settings.max_model_len,
        "limit_mm_per_prompt": {"image": settings.limit_images, "video": settings.limit_videos},
        # vllm serve decodes the video itself: 32 frames by default; the app samples 2 fps.
        "media_io_kwargs": {"video": {"num_frames": settings.video_frames}},
        "seed": settings.seed,
    }
    if not settings.cpu:
        engine_kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
    if settings.enforce_eager or settings.cpu:
        engine_kwargs["enforce_eager"] = True
    engine_kwargs.update(settings.extra_engine_kwargs or {})
    pre_cpus = settings.preprocessor_cpus or (0.5 if settings.cpu else 2)
    media: dict[str, Any] = {
        "allow_hosts": ["127.0.0.1"],
        "decode_threads": max(1, int(pre_cpus)),
    }
    ipx = settings.image_max_pixels or (1280 * 28 * 28 if settings.cpu else None)
    if ipx:
        media["image_max_pixels"] = ipx
    return {
        "model": {"path": settings.model_dir, "served_name": settings.served_name},
        "engine": {
            "accelerator": "CPU" if settings.cpu else "GPU",
            "tensor_parallel_size": settings.tensor_parallel_size,
            "allreduce_fusion": settings.allreduce_fusion,
            "replica_cpus": 0.5 if settings.cpu else 2,
            "engine_kwargs": engine_kwargs,
            **({"cache_dir": settings.cache_dir} if settings.cache_dir else {}),
        },
        "media": media,
    }


def shared_engine_kwargs(settings: BenchSettings) -> dict[str, Any]:
    """The vLLM engine arguments an app engine replica uses (the app's own builder)."""
    from serve_app.app_config import parse_app_config
    from serve_app.engine.args import build_engine_kwargs
    from serve_app.engine.placement import engine_placement

    config = parse_app_config(app_args(settings))
    return build_engine_kwargs(config, settings.model_dir, engine_placement(config.engine))


def vllm_cli_args(kwargs: dict[str, Any]) -> list[str]:
    """Engine kwargs -> `vllm serve` flags (bool True -> --flag, False -> --no-flag, dict/list -> JSON)."""
    out: list[str] = []
    for key, value in kwargs.items():
        if key in _CLI_SKIP:
            if key in _CLI_DEFAULTS and value != _CLI_DEFAULTS[key]:
                raise ValueError(f"engine kwarg {key}={value!r} differs from vllm serve's default")
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            out += [flag, json.dumps(value, separators=(",", ":"))]
        elif value is None:
            continue
        else:
            out += [flag, str(value)]
    return out


def vllm_command(settings: BenchSettings, port: int, variant_args: list[str] | None = None) -> list[str]:
    """``vllm serve`` (the CLI, so per-server options such as ``--api-server-count`` work) with the
    shared engine arguments, then the variant's own flags."""
    kwargs = shared_engine_kwargs(settings)
    return [sys.executable, "-m", "bench.serve_bench.vllm_cli", "serve", settings.model_dir,
            "--served-model-name", settings.served_name,
            "--host", "127.0.0.1", "--port", str(port),
            "--tensor-parallel-size", str(settings.tensor_parallel_size),
            *vllm_cli_args(kwargs), *(variant_args or [])]


def serve_config(settings: BenchSettings, port: int, env: dict[str, str]) -> dict[str, Any]:
    """A Serve config with configs/local.yaml's structure, sized for a benchmark: fixed replica counts
    (no autoscaling in the middle of a measurement) and queues deep enough for the top concurrency."""
    cpus = os.cpu_count() or 2
    cpu = settings.cpu
    pre_cpus = settings.preprocessor_cpus or (0.5 if cpu else 2)
    if settings.preprocessor_replicas:
        pre_n = settings.preprocessor_replicas
    elif cpu:
        pre_n = 1
    else:
        # leave cores for the engine replica + vLLM engine core (2-3), ingress + proxy (2-3), the load
        # generator and the static media server (1-2)
        pre_n = max(1, int((cpus - 8) // pre_cpus))
    ingress_n = settings.ingress_replicas or (1 if cpu else 2)
    deep = max(256, 4 * settings.max_concurrency)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 900, "keep_alive_timeout_s": 75},
        "logging_config": {"encoding": "TEXT", "log_level": "INFO"},
        "applications": [{
            "name": "qwen-vl",
            "route_prefix": "/",
            "import_path": "serve_app.app:build_app",
            "runtime_env": {"env_vars": dict(env)},
            "args": app_args(settings),
            "deployments": [
                {"name": "Ingress", "num_replicas": ingress_n, "max_ongoing_requests": 4 * deep,
                 "ray_actor_options": {"num_cpus": 0.25 if cpu else 1}},
                {"name": "Preprocessor", "num_replicas": pre_n, "max_ongoing_requests": 64,
                 "ray_actor_options": {"num_cpus": pre_cpus}},
                {"name": "Engine", "num_replicas": 1, "max_ongoing_requests": deep, "max_queued_requests": deep,
                 "health_check_period_s": 10, "health_check_timeout_s": 120, "graceful_shutdown_timeout_s": 10},
            ],
        }],
    }


def serve_command(config_path: Path, metrics_port: int | None = None) -> list[str]:
    """The app as ``make serve`` runs it: ``python -m serve_app serve`` (``serve run`` after starting
    Ray with its Prometheus metrics export port fixed)."""
    port = ["--metrics-port", str(metrics_port)] if metrics_port else []
    return [sys.executable, "-m", "serve_app", "serve", *port, str(config_path)]


# ----------------------------------------------------------------------------------------- processes
def _pids_with_marker(marker: str) -> list[int]:
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def env_audit(marker: str, names: list[str]) -> list[dict[str, Any]]:
    """For every process of a server run (its marker): the command and the values of ``names``
    (absent: None) — proof that settings reached the engine core and the vLLM workers."""
    needle = f"{MARKER_ENV}={marker}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            entries = (d / "environ").read_bytes().split(b"\0")
            if needle not in entries:
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        env = dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)
        # setproctitle (vLLM's "VLLM::EngineCore", "VLLM::Worker_TP0") writes the new title over the
        # memory /proc/PID/environ is read from: there a missing variable proves nothing.
        rewritten = "python" not in cmd.split(" ")[0] and not cmd.startswith("ray::")
        out.append({"pid": int(d.name), "comm": comm, "cmd": cmd[:160], "environ_unreliable": rewritten,
                    **{n: env.get(n) for n in names}})
    return out


ENGINE_GAVE_UP = re.compile(r"Failed to update the deployments \['Engine'\]")
ENGINE_REPLICA_STARTED = re.compile(r"Adding 1 replica to Deployment\(name='Engine'")


def wait_engine_given_up(log_path: Path, proc: subprocess.Popen, timeout: float) -> float | None:
    """Seconds until Serve's controller gives the Engine deployment up (DEPLOY_FAILED), as the log of
    `serve run` shows it; None if that did not happen within ``timeout`` or the process exited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if ENGINE_GAVE_UP.search(log_path.read_text(errors="replace")):
            return time.monotonic() - t0
        time.sleep(1)
    return None


def serve_status(log_text: str, timeout: float = 60) -> dict[str, Any] | None:
    """`serve status` of the local Ray instance that `serve run` started (its dashboard URL is in
    the log), through the CLI, which sends the dashboard's auth token (plain HTTP gets a 401)."""
    import yaml

    m = re.search(r"dashboard at \S*?http://127\.0\.0\.1:(\d+)", log_text)
    if m is None:
        return None
    env = dict(os.environ)
    # A local Ray instance turns token authentication on and keeps the token in ~/.ray/auth_token;
    # the CLI only sends it when told that the mode is "token".
    if "RAY_AUTH_MODE" not in env and (Path.home() / ".ray" / "auth_token").exists():
        env["RAY_AUTH_MODE"] = "token"
    out = subprocess.run([sys.executable, "-m", "ray.serve.scripts", "status", "-a", f"http://127.0.0.1:{m.group(1)}"],
                         capture_output=True, text=True, timeout=timeout, env=env)
    try:
        return yaml.safe_load(out.stdout) or None
    except yaml.YAMLError:
        return {"unparsed": out.stdout[-4000:] or out.stderr[-2000:]}


class ServerProcess:
    """A server command in its own process group, output to ``log_path``."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, base_url: str) -> None:
        self.cmd = cmd
        self.base_url = base_url
        self.log_path = log_path
        self.marker = uuid.uuid4().hex
        full_env = dict(os.environ)
        full_env.update(env)
        full_env[MARKER_ENV] = self.marker
        full_env["PYTHONUNBUFFERED"] = "1"
        pp = [str(REPO)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        full_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(pp))
        self._log = open(log_path, "ab")
        self._log.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log.flush()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
                                     start_new_session=True)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, model: str, timeout: float) -> float:
        """Seconds from launch until GET /v1/models lists ``model``."""
        import httpx

        deadline = self.t0 + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.base_url}/v1/models", timeout=5)
                if r.status_code == 200 and any(m.get("id") == model for m in r.json().get("data", [])):
                    return time.monotonic() - self.t0
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> dict[str, Any]:
        t = time.monotonic()
        how = "already exited"
        if self.proc.poll() is None:
            how = "SIGINT"
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                how = "SIGKILL"
        # Whatever is left in the group (Ray workers, vLLM engine core) or carries our marker.
        for _ in range(20):
            left = False
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
                left = True
            except ProcessLookupError:
                pass
            for pid in _pids_with_marker(self.marker):
                left = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not left:
                break
            time.sleep(0.5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return {"how": how, "seconds": round(time.monotonic() - t, 2)}


class StaticServer:
    """``python -m http.server`` on 127.0.0.1 for the URL workloads (its own process: not the client's CPU)."""

    def __init__(self, directory: Path, port: int, log_path: Path) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        for _ in range(100):
            try:
                httpx.get(self.base_url + "/", timeout=2)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None:
                    raise RuntimeError("static media server exited")
                time.sleep(0.1)
        raise TimeoutError("static media server did not start")

    def cpu_seconds(self) -> float | None:
        from .evidence import proc_stat

        st = proc_stat(self.proc.pid)
        return None if st is None else st[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_info() -> dict[str, Any] | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    gpus = []
    for line in out.stdout.strip().splitlines():
        name, total, used, driver = [x.strip() for x in line.split(",")]
        gpus.append({"name": name, "memory_total_mib": int(total), "memory_used_mib": int(used), "driver": driver})
    return {"gpus": gpus}


def wait_gpu_free(max_used_mib: int = 2048, timeout: float = 60.0) -> dict[str, Any] | None:
    """Before a launch: wait until the previous phase's processes have released the GPU memory."""
    deadline = time.monotonic() + timeout
    info = gpu_info()
    while info and any(g["memory_used_mib"] > max_used_mib for g in info["gpus"]) and time.monotonic() < deadline:
        time.sleep(2)
        info = gpu_info()
    return info
