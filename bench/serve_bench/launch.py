"""One server launch, shared by the load phases and the campaign: environment, command, start,
readiness, the cold-start breakdown, and the stop that leaves nothing behind.

``vllm``: the ``vllm serve`` CLI with the shared engine arguments plus the variant's own flags
(e.g. ``--api-server-count 8``). ``app``: ``python -m serve_app serve`` (what ``make serve`` and
production run), Ray's metrics export port fixed so its Prometheus text can be sampled, Ray's temp
dir per launch so the replicas' own log files can be read afterwards (in Serve's throughput mode
their output does not reach ``serve run``'s log while the engine starts).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.engine import cache_env
from serve_app.ray_env import THROUGHPUT_ENV

from . import coldstart, evidence
from .servers import (BenchSettings, ServerProcess, base_env, env_audit, free_port, serve_command, serve_config,
                      shared_engine_kwargs, vllm_command, wait_gpu_free)


@dataclass
class Launched:
    server: str  # "vllm" | "app"
    variant: str
    proc: ServerProcess
    follower: coldstart.LogFollower
    log_path: Path
    key_dir: Path
    launch_wall: float
    metrics_url: str | None
    ray_tmp: Path | None
    result: dict[str, Any] = field(default_factory=dict)
    ready_s: float | None = None
    first_token_s: float | None = None


def start(*, server: str, variant: str, settings: BenchSettings, workdir: Path, cache_dir: Path, stamp: str,
          server_env: dict[str, str], app_env: dict[str, str], serve_mode: str, vllm_args: list[str],
          device: str, audited_env: list[str]) -> Launched:
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"server": server, "variant": variant}
    if device == "gpu":
        result["gpu_before"] = wait_gpu_free()
    result["compile_cache"] = {"dir": str(cache_dir), "existed": cache_dir.is_dir()}
    settings = dataclasses.replace(settings, cache_dir=str(cache_dir))  # the app's engine.cache_dir too
    env = dict(base_env(settings, cache_dir), **server_env)
    key_dir = cache_env.cache_base(env)
    result["compile_cache"]["key_dir"] = str(key_dir)
    # What the launch found and what it left, per cache (vllm, inductor, triton, flashinfer, cuda):
    # which cache a start filled is evidence for the breakdown.
    result["compile_cache"]["inventory_before"] = cache_env.inventory(key_dir)
    port = free_port()
    log_path = logs / f"{variant}-{stamp}.log"
    result["engine_kwargs"] = shared_engine_kwargs(settings)
    ray_tmp = None
    if server == "vllm":
        cmd = vllm_command(settings, port, vllm_args)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
    else:
        import yaml

        if serve_mode == "throughput":
            # HAProxy's stats and metrics listeners default to fixed ports (8404, 9101)
            env = dict(env, **THROUGHPUT_ENV, RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()),
                       RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
        env = dict(env, **app_env)
        cfg = serve_config(settings, port, env)
        cfg_path = workdir / f"serve-config-{stamp}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        result["serve_config"] = cfg
        metrics_port = free_port()
        cmd = serve_command(cfg_path, metrics_port)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        ray_tmp = _ray_tmp(workdir, stamp)
        env = dict(env, RAY_ADDRESS="local", RAY_DEDUP_LOGS="0", RAY_TMPDIR=str(ray_tmp))
    result["command"] = " ".join(cmd)
    result["env"] = env
    launch_wall = time.time()
    proc = ServerProcess(cmd, env, log_path, f"http://127.0.0.1:{port}")
    result["marker"] = proc.marker  # every process of this server carries SERVE_BENCH_RUN=<marker>
    follower = coldstart.LogFollower(log_path, proc.t0).start()
    result["audited_env"] = audited_env
    return Launched(server, variant, proc, follower, log_path, key_dir, launch_wall, metrics_url, ray_tmp, result)


# Ray puts its sockets under RAY_TMPDIR/ray/session_<date>_<pid>/sockets/plasma_store (~70 characters
# after the directory), and a Unix socket path stops at 107 bytes.
_RAY_SOCKET_SUFFIX = 72


def _ray_tmp(workdir: Path, stamp: str) -> Path:
    """This launch's own Ray temp dir: WORKDIR/rt-HHMMSS, or, where that path would make Ray's socket
    paths too long, a short one under /tmp that WORKDIR/rt-HHMMSS links to."""
    near = workdir / f"rt-{stamp[-6:]}"
    if len(str(near)) + _RAY_SOCKET_SUFFIX <= 107:
        return near
    import tempfile

    short = Path(tempfile.mkdtemp(prefix=f"rt{stamp[-6:]}-", dir="/tmp"))
    if not near.exists():
        near.symlink_to(short)
    return short


def replica_logs(launched: Launched) -> list[Path]:
    """The app's Ray log files (replicas, workers), where its engine's start-up lines are."""
    if launched.ray_tmp is None:
        return []
    root = launched.ray_tmp / "ray" / "session_latest" / "logs"
    if not root.is_dir():
        return []
    return sorted([*root.glob("serve/replica_*.log"), *root.glob("worker-*.out"), *root.glob("worker-*.err")])


def finish(launched: Launched) -> dict[str, Any]:
    """Stop the server; the cold-start breakdown (the app's from its replicas' log files too) and the
    engine config vLLM logged."""
    r = launched.result
    r["stop"] = launched.proc.stop()
    r["compile_cache"]["inventory_after"] = cache_env.inventory(launched.key_dir)
    launched.follower.stop()
    files = replica_logs(launched)
    events = coldstart.merge_events(launched.follower.events,
                                    coldstart.events_from_files(files, launched.launch_wall))
    r["coldstart"] = coldstart.summarize(events, launched.ready_s, launched.first_token_s)
    r["log_events"] = [{"key": e.key, "t": None if e.t is None else round(e.t, 2), "line": e.line}
                       for e in events][:200]
    texts = [launched.log_path.read_text(errors="replace")] + [p.read_text(errors="replace") for p in files]
    r["engine_configs"] = evidence.engine_configs(texts)
    r["log"] = str(launched.log_path)
    r["replica_log_files"] = [str(p) for p in files]
    r["ray_tmp"] = None if launched.ray_tmp is None else str(launched.ray_tmp)
    return r


def audit(launched: Launched) -> None:
    launched.result["env_audit"] = env_audit(launched.proc.marker, launched.result.get("audited_env", []))
