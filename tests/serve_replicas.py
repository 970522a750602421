"""The replicas of a `serve run` started by tests/conftest.py, seen from outside: their actors (a
short Ray driver in a subprocess, so the test process never joins a Ray cluster) and their
processes (psutil, for RSS). Only processes descended from that `serve run` are ever looked at:
other Ray clusters on the same machine run the same replica classes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import psutil

APP = "qwen-vl"  # configs/local.yaml's application name
REPLICA_PREFIX = f"SERVE_REPLICA::{APP}#"  # Ray 2.60: ReplicaID.to_full_id_str, actors in namespace "serve"


def _descendants(root_pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _arg(cmdline: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in cmdline if a.startswith(f"{name}=")), None)


def gcs_address(served) -> str:
    """The GCS address of the Ray instance that `serve run` started (ray.init(address="local")
    writes no address file): the gcs_server among its descendants names its session directory,
    which holds the port it bound."""
    for p in _descendants(served.proc.pid):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].endswith("gcs_server"):
            session, ip = pathlib.Path(_arg(cmd, "--session-dir")), _arg(cmd, "--node-ip-address")
            port = next(session.glob("gcs_server_port_*")).read_text().strip()
            return f"{ip}:{port}"
    raise RuntimeError(f"no gcs_server under serve run (pid {served.proc.pid})")


def driver(served, code: str, timeout: float = 120) -> object:
    """Run ``code`` in a short Ray driver connected to the app's cluster; it prints one JSON line."""
    prog = ("import json, ray\n"
            f"ray.init(address={gcs_address(served)!r}, namespace='serve', logging_level='ERROR',"
            " log_to_driver=False)\n"
            f"{code}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    app_env = psutil.Process(served.proc.pid).environ()
    # Ray 2.60 turns token authentication on for a cluster that ray.init starts (the token in
    # ~/.ray/auth_token) unless RAY_AUTH_MODE says otherwise, but a driver joining it only
    # authenticates when told to; and it must agree with the cluster on the node's address.
    env["RAY_AUTH_MODE"] = app_env.get("RAY_AUTH_MODE", "token")
    for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_TMPDIR"):
        if k in app_env:
            env[k] = app_env[k]
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


_LIST = f"""
names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["namespace"] == "serve" and a["name"].startswith({REPLICA_PREFIX!r}))
out = {{}}
for name in names:
    try:
        h = ray.get_actor(name, namespace="serve")
    except ValueError:  # died between the listing and the lookup
        continue
    out.setdefault(name[len({REPLICA_PREFIX!r}):].split("#")[0], []).append(
        {{"name": name, "actor_id": h._actor_id.hex()}})
"""


def replicas(served) -> dict[str, list[dict[str, str]]]:
    """Live replica actors per deployment: [{"name", "actor_id"}] (Serve's named actors)."""
    return driver(served, _LIST + "print(json.dumps(out))")


def kill_replica(served, deployment: str) -> dict[str, str]:
    """``ray.kill`` one replica actor of ``deployment`` (no Ray-level restart: Serve's controller
    notices the dead actor and starts a new replica, as after a crash). Returns its name, actor id
    and ``killed_at`` (``time.time()`` right after the kill: the driver takes seconds to start and
    stop, so the caller's clock around this call is too coarse)."""
    code = _LIST + f"""
import time
victim = out[{deployment!r}][0]
ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=True)
victim["killed_at"] = time.time()
print(json.dumps(victim))
"""
    return driver(served, code)


def wait_replicas(served, expected: dict[str, int], timeout: float = 300, exclude: set[str] = frozenset()):
    """Until each deployment has ``expected`` live replicas none of which is in ``exclude``
    (actor ids of killed ones) and Serve reports the app RUNNING."""
    code = _LIST + f"""
from ray import serve
print(json.dumps({{"replicas": out, "status": serve.status().applications[{APP!r}].status}}))
"""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = driver(served, code)
        live = {d: [r for r in rs if r["actor_id"] not in exclude] for d, rs in last["replicas"].items()}
        if last["status"] == "RUNNING" and all(len(live.get(d, [])) >= n for d, n in expected.items()):
            return last["replicas"]
        time.sleep(1)
    raise TimeoutError(f"replicas not back after {timeout}s: {last}")


def replica_processes(served) -> dict[str, list[psutil.Process]]:
    """The replica worker processes under this `serve run`, per deployment (by the process title
    Ray gives an actor's worker: ``ray::ServeReplica:<app>:<deployment>``)."""
    out: dict[str, list[psutil.Process]] = {}
    prefix = f"ray::ServeReplica:{APP}:"
    for p in _descendants(served.proc.pid):
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if title.startswith(prefix):
            # busy, the title names the method too: ray::ServeReplica:qwen-vl:Engine.handle_request...
            out.setdefault(title[len(prefix):].split()[0].split(".")[0], []).append(p)
    return out


def tree_rss(p: psutil.Process) -> int:
    """RSS of a replica with its children (the engine replica's vLLM EngineCore process)."""
    total = 0
    for q in [p, *p.children(recursive=True)]:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def engine_cores(served) -> list[psutil.Process]:
    """vLLM engine-core processes under this `serve run` (a killed engine replica must not leave one)."""
    out = []
    for p in _descendants(served.proc.pid):
        try:
            if " ".join(p.cmdline()).startswith("VLLM::EngineCore"):
                out.append(p)
        except psutil.Error:
            pass
    return out
