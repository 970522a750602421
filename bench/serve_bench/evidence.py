"""Evidence recorded next to every level and launch, so a ratio can be checked rather than believed:
CPU seconds per server process, GPU utilisation, the engine's running/waiting counts, the effective
vLLM engine config of each server (parsed from its log and diffed), and the provenance of the run
(revision, declared dependencies present).

Sampling runs in a thread at ``period_s`` (1 s): ``nvidia-smi`` as one long-lived subprocess, the
server's Prometheus text (``vllm serve``: its own ``/metrics``; the app: Ray's metrics export port,
where vLLM's RayPrometheusStatLogger publishes the same gauges with a ``ray_`` prefix).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------- process CPU
def proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime seconds) of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def _label(pid: int) -> str:
    """What the process is: Ray/vLLM set titles (``ray::ServeReplica:qwen-vl:Engine``, ``VLLM::EngineCore``)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    if cmd.startswith("ray::"):
        return cmd.split(" ")[0][:60]
    if cmd.startswith("VLLM::") or cmd.startswith("VLLM"):
        return cmd.split(" ")[0][:40]
    for key in ("haproxy", "raylet", "gcs_server", "dashboard", "vllm.entrypoints", "serve_app serve",
                "ray.serve.scripts", "log_monitor", "monitor.py", "runtime_env"):
        if key in cmd:
            return key
    return Path(cmd.split(" ")[0]).name[:40] or "?"


def server_pids(root_pid: int, marker: str | None, marker_env: str = "SERVE_BENCH_RUN") -> list[int]:
    """The server's processes: descendants of ``root_pid`` plus every process carrying the marker
    (Ray's workers are children of the raylet; a renamed ``VLLM::`` process may have lost its environ)."""
    parents: dict[int, int] = {}
    marked = set()
    needle = f"{marker_env}={marker}".encode() if marker else None
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        st = proc_stat(pid)
        if st is None:
            continue
        parents[pid] = st[0]
        if needle:
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    marked.add(pid)
            except OSError:
                pass
    out = set(marked) | {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in out and pid not in out:
                out.add(pid)
                changed = True
    return sorted(p for p in out if p in parents)


class ProcessCPU:
    """CPU seconds each of a server's processes used between ``start()`` and ``stop()``, by label."""

    def __init__(self, root_pid: int, marker: str | None) -> None:
        self.root_pid, self.marker = root_pid, marker
        self._t0: dict[int, tuple[str, float]] = {}
        self._w0 = 0.0

    def _snap(self) -> dict[int, tuple[str, float]]:
        out = {}
        for pid in server_pids(self.root_pid, self.marker):
            st = proc_stat(pid)
            if st:
                out[pid] = (_label(pid), st[1])
        return out

    def start(self) -> None:
        self._t0, self._w0 = self._snap(), time.monotonic()

    def stop(self) -> dict[str, Any]:
        t1, wall = self._snap(), max(time.monotonic() - self._w0, 1e-9)
        by: dict[str, float] = {}
        for pid, (label, cpu) in t1.items():
            base = self._t0.get(pid, (label, 0.0))[1]
            by[label] = by.get(label, 0.0) + max(0.0, cpu - base)
        top = dict(sorted(((k, round(v, 2)) for k, v in by.items() if v >= 0.05), key=lambda kv: -kv[1]))
        return {"wall_s": round(wall, 2), "cpu_s_total": round(sum(by.values()), 2),
                "cores_busy": round(sum(by.values()) / wall, 2), "by_process": top}


# ------------------------------------------------------------------------------- sampled series
_GAUGE = re.compile(r"^(?:ray_)?vllm[:_](num_requests_running|num_requests_waiting|kv_cache_usage_perc|"
                    r"gpu_cache_usage_perc)(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$")


def parse_engine_gauges(text: str) -> dict[str, float]:
    """Sum of vLLM's running/waiting gauges (and KV cache use) over every series in a Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _GAUGE.match(line)
        if m:
            key = {"gpu_cache_usage_perc": "kv_cache_usage_perc"}.get(m.group(1), m.group(1))
            out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def _series(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "mean": None, "max": None}
    return {"n": len(values), "mean": round(sum(values) / len(values), 3), "max": round(max(values), 3)}


class LevelSampler:
    """GPU utilisation and the engine's gauges, sampled while a level runs."""

    def __init__(self, metrics_url: str | None, gpu: bool, period_s: float = 1.0) -> None:
        self.metrics_url, self.gpu, self.period_s = metrics_url, gpu, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._smi: subprocess.Popen | None = None
        self.gpu_util: list[float] = []
        self.gpu_mem_mib: list[float] = []
        self.gauges: dict[str, list[float]] = {}
        self.metrics_errors = 0

    def start(self) -> "LevelSampler":
        if self.gpu:
            try:
                self._smi = subprocess.Popen(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                     f"-lms={int(self.period_s * 1000)}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                threading.Thread(target=self._read_smi, daemon=True).start()
            except OSError:
                self._smi = None
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _read_smi(self) -> None:
        assert self._smi and self._smi.stdout
        for line in self._smi.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                # several GPUs: one line each; the mean is what the engine's GPUs did
                self.gpu_util.append(float(parts[0]))
                self.gpu_mem_mib.append(float(parts[1]))
            except (ValueError, IndexError):
                continue

    def _poll(self) -> None:
        import httpx

        while not self._stop.wait(self.period_s):
            if not self.metrics_url:
                continue
            try:
                r = httpx.get(self.metrics_url, timeout=2)
                for k, v in parse_engine_gauges(r.text).items():
                    self.gauges.setdefault(k, []).append(v)
            except httpx.HTTPError:
                self.metrics_errors += 1

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._smi:
            self._smi.terminate()
            try:
                self._smi.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._smi.kill()
        out: dict[str, Any] = {"engine": {k: _series(v) for k, v in self.gauges.items()},
                               "metrics_errors": self.metrics_errors}
        if self.gpu:
            out["gpu_util_pct"] = _series(self.gpu_util)
            out["gpu_mem_mib"] = _series(self.gpu_mem_mib)
        return out


# ------------------------------------------------------------------------------- engine config
_CONFIG_LINE = re.compile(r"Initializing a V1 LLM engine \(v?([^)]*)\) with config: (.*)$")
# Differences that are not differences: where each server put its files, and the process layout.
DECLARED_DIFFERENCES = frozenset()


def split_config(text: str) -> dict[str, str]:
    """``key=value, key=value`` with nested brackets/quotes (vLLM's one-line engine config) -> dict."""
    out: dict[str, str] = {}
    depth, quote, start = 0, None, 0
    items = []
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0 and re.match(r",\s*[A-Za-z_][A-Za-z0-9_]*=", text[i:]):
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    for item in items:
        k, sep, v = item.strip().partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def engine_configs(texts: list[str]) -> list[dict[str, str]]:
    """Every engine config line found in the given log texts (one per engine start), parsed."""
    out = []
    for text in texts:
        for line in text.splitlines():
            m = _CONFIG_LINE.search(line)
            if m:
                cfg = split_config(m.group(2))
                cfg["_vllm_version"] = m.group(1)
                out.append(cfg)
    return out


def diff_configs(a: dict[str, str], b: dict[str, str], declared: frozenset[str] | set[str] = DECLARED_DIFFERENCES
                 ) -> dict[str, Any]:
    keys = sorted(set(a) | set(b))
    diffs = {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)}
    return {"declared": {k: v for k, v in diffs.items() if k in declared},
            "undeclared": {k: v for k, v in diffs.items() if k not in declared}}


# ------------------------------------------------------------------------------------ provenance
def declared_dependencies(pyproject: Path) -> list[str]:
    """Distribution names of ``[project] dependencies`` (no extras), without a TOML parser on 3.10."""
    text = pyproject.read_text()
    m = re.search(r"^dependencies\s*=\s*(\[.*?^\])", text, re.S | re.M)
    if not m:
        return []
    body = re.sub(r"#.*$", "", m.group(1), flags=re.M)
    reqs = ast.literal_eval(body)
    return [re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in reqs]


def missing_dependencies(pyproject: Path) -> list[str]:
    missing = []
    for name in declared_dependencies(pyproject):
        try:
            md.version(name)
        except md.PackageNotFoundError:
            missing.append(name)
    return missing


def revision(repo: Path) -> dict[str, Any]:
    """The commit the run is from: ``BENCH_REVISION`` (set by whoever copied the tree to the GPU
    machine, where there is no .git), else ``git rev-parse``; ``dirty`` when the tree differs."""
    env = os.environ.get("BENCH_REVISION")
    if env:
        return {"commit": env, "source": "BENCH_REVISION", "dirty": os.environ.get("BENCH_DIRTY", "unknown")}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            return {"commit": head.stdout.strip(), "source": "git", "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"commit": None, "source": None, "dirty": "unknown"}
