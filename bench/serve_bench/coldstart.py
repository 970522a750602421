"""Cold start: what vLLM logs while it starts, timed as the lines appear (pure parsing + a tailer).

The messages are vLLM's own (checked in vLLM 0.32's source and in older releases; wording that
changed between releases is matched in both forms):

* ``Loading weights took %.2f seconds`` (model_loader/default_loader.py)
* ``Model loading took %s GiB memory and %.6f seconds`` (older: ``... GiB and %.6f seconds``;
  v1/worker/gpu_model_runner.py)
* ``Dynamo bytecode transform time: %.2f s`` / ``Compiling a graph for ... takes %.2f s`` /
  ``Directly load the compiled graph(s) ... took %.3f s`` (compilation/backends.py)
* ``torch.compile takes %.2f s in total`` (older) / ``torch.compile took %.2f s in total``
  (compilation/monitor.py; once for the language model and, where compiled, once for the encoder)
* ``Memory profiling takes %.2f seconds`` (utils/mem_utils.py), ``Available KV cache memory: %s GiB``
  (v1/worker/gpu_worker.py), ``GPU KV cache size: %s tokens`` (v1/core/kv_cache_utils.py)
* ``Graph capturing finished in %.0f secs, took %.2f GiB`` (v1/worker/gpu_model_runner.py)
* ``init engine (profile, create kv cache, warmup model) took %.2f s`` [``(compilation: %.2f s ...)``]
  (v1/engine/core.py)
* uvicorn's ``Application startup complete`` (``vllm serve``), Serve's ``Deployed app`` /
  ``Application '...' is ready`` (``serve run``).

Each event also gets the time its line appeared, relative to the launch, so silent gaps (e.g. the
~115 s between graph capture and "ready" in issue #6's anchor) show up in the timeline.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
PATTERNS: dict[str, re.Pattern[str]] = {
    "process_up": re.compile(r"vLLM API server version|non-default args:|Started a local Ray instance"),
    "engine_init_start": re.compile(r"Initializing a V1 LLM engine"),
    "loading_weights": re.compile(rf"Loading weights took {_NUM} s"),
    "model_loading": re.compile(rf"Model loading took {_NUM} GiB(?: memory)? and {_NUM} s"),
    "dynamo": re.compile(rf"Dynamo bytecode transform time: {_NUM} s"),
    "graph_compile": re.compile(rf"Compiling a graph for .*? takes {_NUM} s"),
    "compile_cache_load": re.compile(rf"Directly load the compiled graph.*?took {_NUM} s"),
    "torch_compile_total": re.compile(rf"torch\.compile (?:takes|took) {_NUM} s in total"),
    "memory_profiling": re.compile(rf"Memory profiling takes {_NUM} s"),
    "kv_cache_memory": re.compile(rf"Available KV cache memory: {_NUM} GiB"),
    "kv_cache_tokens": re.compile(r"KV cache size: ([0-9,]+) tokens"),
    "max_concurrency": re.compile(rf"Maximum concurrency for ([0-9,]+) tokens per request: {_NUM}x"),
    "cudagraph": re.compile(rf"Graph capturing finished in {_NUM} secs?, took {_NUM} GiB"),
    "init_engine": re.compile(
        rf"init engine \(profile, create kv cache, warmup model\) took {_NUM} s(?:\S*)?(?: \(compilation: {_NUM} s)?"),
    "api_startup_complete": re.compile(r"Application startup complete"),
    "serve_app_ready": re.compile(r"Deployed app '[^']*' successfully|Application '[^']*' is ready"),
    "serve_engine_ready": re.compile(rf"engine ready in {_NUM}s"),
    # The app's engine replica (serve_app/engine/runtime.py): where its own start goes.
    "replica_process_age": re.compile(rf"engine start phases \(s\):.*\bprocess_age_at_init={_NUM}"),
    "replica_import_vllm": re.compile(rf"engine start phases \(s\):.*\bimport_vllm={_NUM}"),
    "replica_async_llm": re.compile(rf"engine start phases \(s\):.*\basync_llm={_NUM}"),
}


@dataclass
class LogEvent:
    key: str
    t: float | None  # seconds after launch when the line appeared (None: parsed offline)
    values: tuple[float, ...]
    line: str


def parse_line(line: str) -> list[tuple[str, tuple[float, ...]]]:
    out = []
    for key, pat in PATTERNS.items():
        m = pat.search(line)
        if m:
            vals = tuple(float(g.replace(",", "")) for g in m.groups() if g is not None)
            out.append((key, vals))
    return out


def parse_text(text: str) -> list[LogEvent]:
    events = []
    for line in text.splitlines():
        for key, vals in parse_line(line):
            events.append(LogEvent(key, None, vals, line.strip()[:400]))
    return events


def _first(events: list[LogEvent], key: str) -> LogEvent | None:
    return next((e for e in events if e.key == key), None)


def _last(events: list[LogEvent], key: str) -> LogEvent | None:
    return next((e for e in reversed(events) if e.key == key), None)


def _sum(events: list[LogEvent], key: str, idx: int = 0) -> float | None:
    vals = [e.values[idx] for e in events if e.key == key and len(e.values) > idx]
    return round(sum(vals), 3) if vals else None


def summarize(events: list[LogEvent], ready_s: float | None = None,
              first_token_s: float | None = None) -> dict[str, Any]:
    """The breakdown: durations vLLM reports, plus the timeline of when each milestone appeared."""
    ml = _first(events, "model_loading")
    lw = _first(events, "loading_weights")
    cg = _first(events, "cudagraph")
    ie = _first(events, "init_engine")
    kv = _first(events, "kv_cache_memory")
    kvt = _first(events, "kv_cache_tokens")
    out: dict[str, Any] = {
        "ready_s": None if ready_s is None else round(ready_s, 2),
        "first_token_s": None if first_token_s is None else round(first_token_s, 2),
        "weights_load_s": lw.values[0] if lw else None,
        "model_loading_s": ml.values[1] if ml else None,
        "model_gib": ml.values[0] if ml else None,
        "dynamo_s": _sum(events, "dynamo"),
        "inductor_compile_s": _sum(events, "graph_compile"),
        "compile_cache_load_s": _sum(events, "compile_cache_load"),
        "torch_compile_total_s": _sum(events, "torch_compile_total"),
        "memory_profiling_s": _sum(events, "memory_profiling"),
        "kv_cache_gib": kv.values[0] if kv else None,
        "kv_cache_tokens": int(kvt.values[0]) if kvt else None,
        "cudagraph_s": cg.values[0] if cg else None,
        "cudagraph_gib": cg.values[1] if cg else None,
        "init_engine_s": ie.values[0] if ie else None,
        "init_engine_compile_s": ie.values[1] if ie and len(ie.values) > 1 else None,
        "replica_process_age_s": _sum(events, "replica_process_age"),
        "replica_import_vllm_s": _sum(events, "replica_import_vllm"),
        "replica_async_llm_s": _sum(events, "replica_async_llm"),
    }
    # When each milestone's line appeared (seconds after launch), in order.
    milestones = [
        ("process_up (imports done)", _first(events, "process_up")),
        ("engine_init_start", _first(events, "engine_init_start")),
        ("weights_loaded", ml or lw),
        ("compiled", _last(events, "torch_compile_total")),
        ("kv_cache_sized", kv or kvt),
        ("graphs_captured", cg),
        ("engine_initialized", ie),
        ("engine_ready (app replica)", _first(events, "serve_engine_ready")),
        ("server_up", _first(events, "api_startup_complete") or _first(events, "serve_app_ready")),
    ]
    timeline = [{"event": name, "t": round(e.t, 2)} for name, e in milestones if e is not None and e.t is not None]
    if ready_s is not None:
        timeline.append({"event": "ready (GET /v1/models = 200)", "t": round(ready_s, 2)})
    if first_token_s is not None:
        timeline.append({"event": "first token", "t": round(first_token_s, 2)})
    timeline.sort(key=lambda x: x["t"])
    prev = 0.0
    for item in timeline:
        item["gap"] = round(item["t"] - prev, 2)
        prev = item["t"]
    out["timeline"] = timeline
    return out


@dataclass
class LogFollower:
    """Tails a log file in a thread and timestamps the lines that match :data:`PATTERNS`."""

    path: Path
    t0: float  # time.monotonic() at launch
    events: list[LogEvent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "LogFollower":
        self._thread = threading.Thread(target=self._run, name="log-follower", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pos = 0
        buf = b""
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                    pos += len(data)
            except FileNotFoundError:
                data = b""
            if data:
                now = time.monotonic() - self.t0
                buf += data
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    for key, vals in parse_line(line):
                        self.events.append(LogEvent(key, now, vals, line.strip()[:400]))
            if stopping:
                return
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


# Wall-clock prefixes: vLLM's "INFO 11-30 01:02:03 [file.py:12]" (optionally with .mmm) and Ray's
# "INFO 2026-11-30 01:02:03,456 ..." (Serve replica logs).
_VLLM_TS = re.compile(r"\b(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d+))? \[")
_RAY_TS = re.compile(r"\b(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d),(\d{3}) ")


def line_wallclock(line: str, year: int) -> float | None:
    """The local-time timestamp a log line carries (epoch seconds), or None."""
    import datetime as dt

    m = _RAY_TS.search(line)
    if m:
        y, mo, d, h, mi, s, ms = (int(g) for g in m.groups())
        return dt.datetime(y, mo, d, h, mi, s, ms * 1000).timestamp()
    m = _VLLM_TS.search(line)
    if m:
        mo, d, h, mi, s = (int(g) for g in m.groups()[:5])
        frac = float("0." + m.group(6)) if m.group(6) else 0.0
        try:
            return dt.datetime(year, mo, d, h, mi, s).timestamp() + frac
        except ValueError:
            return None
    return None


def events_from_files(paths: list[Path], launch_wall: float) -> list[LogEvent]:
    """Milestones from log files written by other processes (an app replica's own Ray log files),
    timed by the wall clock on each line relative to the launch."""
    import datetime as dt

    year = dt.datetime.fromtimestamp(launch_wall).year
    events = []
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            hits = parse_line(line)
            if not hits:
                continue
            wall = line_wallclock(line, year)
            t = None if wall is None else wall - launch_wall
            for key, vals in hits:
                events.append(LogEvent(key, t, vals, line.strip()[:400]))
    events.sort(key=lambda e: (e.t is None, e.t or 0.0))
    return events


def merge_events(primary: list[LogEvent], secondary: list[LogEvent]) -> list[LogEvent]:
    """``primary`` (lines the launcher saw as they appeared) plus the keys only ``secondary`` has."""
    have = {e.key for e in primary}
    return primary + [e for e in secondary if e.key not in have]
