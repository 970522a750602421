"""A real multi-node Ray cluster on one machine: a head node and a "GPU" worker node, each started
with ``ray start`` in its own process session and its own ``--temp-dir``.

Used by ``tests/test_local_cluster.py`` and handy for trying the cluster workflow (``serve deploy``,
``ray job submit``) locally::

    python -m cluster.local_cluster up      # prints the addresses, leaves the cluster running
    python -m cluster.local_cluster down    # stops what `up` started (and only that)

The worker node advertises a logical GPU (``--num-gpus``, nothing touches CUDA) and the custom
resource ``gpu_node`` so placement groups can be pinned to it (``engine.bundle_resources``).

Teardown is scoped: ``ray stop`` would stop every Ray instance on the machine (another developer's
``serve run`` included), so instead every process in the sessions this module created, or whose
command line names its temp dir, is terminated (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

STATE_FILE = pathlib.Path(tempfile.gettempdir()) / "serve_app_local_cluster.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_range_free(lo: int, hi: int) -> bool:
    for port in (lo, (lo + hi) // 2, hi):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _worker_port_range(size: int = 200) -> tuple[int, int]:
    """Worker ports away from Ray's default range (10002-19999, used by any other Ray instance
    here) and from the kernel's ephemeral range (where free_port() picks)."""
    for _ in range(50):
        lo = random.randrange(20000, 30000 - size)
        if _port_range_free(lo, lo + size - 1):
            return lo, lo + size - 1
    raise RuntimeError("no free worker port range found")


@dataclass
class NodeSpec:
    num_cpus: float
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class LocalCluster:
    """``start()`` → head + worker nodes; ``stop()`` → nothing left behind."""

    head: NodeSpec = field(default_factory=lambda: NodeSpec(num_cpus=2))
    workers: list[NodeSpec] = field(default_factory=lambda: [NodeSpec(num_cpus=1, num_gpus=1,
                                                                        resources={"gpu_node": 1})])
    env: dict[str, str] | None = None
    root: pathlib.Path | None = None  # temp dirs live here (keep it short: Unix socket paths)
    object_store_memory: int = 256 * 1024 * 1024
    auth_mode: str = "disabled"

    gcs_port: int = 0
    dashboard_port: int = 0
    temp_dirs: list[pathlib.Path] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)  # session ids (= pid of each `ray start`)
    log_dir: pathlib.Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray(self) -> str:
        return str(pathlib.Path(sys.executable).parent / "ray")

    def _start_node(self, name: str, args: list[str], temp_dir: pathlib.Path) -> None:
        assert self.log_dir is not None
        log = open(self.log_dir / f"ray-start-{name}.log", "wb")
        lo, hi = _worker_port_range()
        cmd = [self._ray(), "start", *args, f"--temp-dir={temp_dir}", "--disable-usage-stats",
               f"--min-worker-port={lo}", f"--max-worker-port={hi}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--object-store-memory={self.object_store_memory}"]
        env = dict(os.environ if self.env is None else self.env)
        env.pop("RAY_ADDRESS", None)
        # Job entrypoints (`python -m ...`) run with the node's PATH: make it this interpreter's.
        bindir = str(pathlib.Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Ray >= 2.5x turns token authentication on for a new head when ~/.ray/auth_token exists,
        # but a joining node started without the mode set does not send it. This cluster listens on
        # 127.0.0.1 only: run it without tokens unless the caller chose a mode.
        env.setdefault("RAY_AUTH_MODE", self.auth_mode)
        # A session of its own: every daemon `ray start` spawns (and every worker those spawn)
        # stays in it, which is what stop() uses to find them.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.sessions.append(proc.pid)
        self._save()
        rc = proc.wait(timeout=180)
        log.close()
        if rc != 0:
            text = (self.log_dir / f"ray-start-{name}.log").read_text(errors="replace")
            raise RuntimeError(f"`ray start` ({name}) failed with {rc}:\n{text[-4000:]}")

    def start(self, attempts: int = 2) -> "LocalCluster":
        """Start the nodes; on a busy machine a node can time out joining, so a failed attempt is
        torn down completely and retried on fresh ports."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once()
            except Exception:
                if attempt == attempts:
                    raise
                self.temp_dirs, self.sessions = [], []

        raise AssertionError("unreachable")

    def _start_once(self) -> "LocalCluster":
        base = pathlib.Path(tempfile.mkdtemp(prefix="rc", dir=self.root or "/tmp"))
        self.log_dir = base / "logs"
        self.log_dir.mkdir()
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        try:
            head_dir = base / "h"
            self.temp_dirs.append(head_dir)
            self._start_node("head", [
                "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
                f"--num-cpus={self.head.num_cpus:g}", f"--num-gpus={self.head.num_gpus}",
                *([f"--resources={json.dumps(self.head.resources)}"] if self.head.resources else []),
                "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
            ], head_dir)
            for i, w in enumerate(self.workers):
                wdir = base / f"w{i}"
                self.temp_dirs.append(wdir)
                self._start_node(f"worker{i}", [
                    f"--address={self.address}", "--node-ip-address=127.0.0.1",
                    f"--num-cpus={w.num_cpus:g}", f"--num-gpus={w.num_gpus}",
                    *([f"--resources={json.dumps(w.resources)}"] if w.resources else []),
                ], wdir)
            self.wait_nodes(1 + len(self.workers))
        except BaseException:
            self.stop()
            raise
        return self

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.dashboard_url}/api/v0/nodes", params={"detail": "true", "limit": 100},
                              timeout=10)
                nodes = r.json()["data"]["result"]["result"]
                alive = [x for x in nodes if x["state"] == "ALIVE"]
                if len(alive) >= n:
                    return
                last = f"{len(alive)} of {n} nodes alive"
            except Exception as exc:  # noqa: BLE001 - dashboard still starting
                last = repr(exc)
            time.sleep(1)
        raise TimeoutError(f"cluster not up after {timeout}s: {last}")

    def nodes(self) -> list[dict]:
        import httpx

        r = httpx.get(f"{self.dashboard_url}/api/v0/nodes", params={"detail": "true", "limit": 100}, timeout=10)
        return r.json()["data"]["result"]["result"]

    # ------------------------------------------------------------------ teardown
    def _our_pids(self) -> list[int]:
        marks = [str(d) for d in self.temp_dirs]
        me = os.getpid()
        pids = []
        for entry in pathlib.Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            try:
                sid = os.getsid(pid)
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ProcessLookupError):
                continue
            if sid in self.sessions or any(m in cmdline for m in marks):
                pids.append(pid)
        return pids

    def stop(self, grace_s: float = 5) -> None:
        """Terminate every process this cluster started; nothing else."""
        pids = self._our_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._our_pids():
            time.sleep(0.3)
        for pid in self._our_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._our_pids():
            time.sleep(0.2)
        if self.log_dir is not None and not os.environ.get("SERVE_APP_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(self.log_dir.parent, ignore_errors=True)  # temp dirs and logs
        self._forget()

    def leftovers(self) -> list[int]:
        return self._our_pids()

    # ------------------------------------------------------------------ CLI state
    def _save(self) -> None:
        if os.environ.get("_SERVE_APP_LOCAL_CLUSTER_CLI"):
            STATE_FILE.write_text(json.dumps({
                "sessions": self.sessions, "temp_dirs": [str(d) for d in self.temp_dirs],
                "gcs_port": self.gcs_port, "dashboard_port": self.dashboard_port,
                "log_dir": str(self.log_dir) if self.log_dir else None,
            }))

    def _forget(self) -> None:
        if os.environ.get("_SERVE_APP_LOCAL_CLUSTER_CLI"):
            STATE_FILE.unlink(missing_ok=True)

    @classmethod
    def from_state(cls) -> "LocalCluster":
        state = json.loads(STATE_FILE.read_text())
        c = cls()
        c.sessions = state["sessions"]
        c.temp_dirs = [pathlib.Path(d) for d in state["temp_dirs"]]
        c.gcs_port, c.dashboard_port = state["gcs_port"], state["dashboard_port"]
        c.log_dir = pathlib.Path(state["log_dir"]) if state.get("log_dir") else None
        return c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.local_cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--head-cpus", type=float, default=2)
    p.add_argument("--gpu-node-cpus", type=float, default=2)
    args = p.parse_args(argv)
    os.environ["_SERVE_APP_LOCAL_CLUSTER_CLI"] = "1"
    if args.action == "up":
        if STATE_FILE.exists():
            print(f"a cluster from `up` is still recorded in {STATE_FILE}; run `down` first", file=sys.stderr)
            return 1
        c = LocalCluster(head=NodeSpec(num_cpus=args.head_cpus),
                         workers=[NodeSpec(num_cpus=args.gpu_node_cpus, num_gpus=1, resources={"gpu_node": 1})])
        c.start()
        print(f"RAY_ADDRESS={c.address}\ndashboard (serve deploy --address, ray job submit --address): "
              f"{c.dashboard_url}")
        return 0
    if not STATE_FILE.exists():
        print("no cluster recorded; nothing to stop")
        return 0
    LocalCluster.from_state().stop()
    print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
