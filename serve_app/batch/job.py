"""Offline batch inference on a Ray cluster, with the online service's own preprocessing and engine.

    ray job submit --working-dir . -- \\
        python -m serve_app.batch --config configs/qwen2.5-vl-72b-awq-tp4.yaml \\
            --input /data/batches/in.jsonl --output /data/batches/out.jsonl

``--config`` is a Serve config file (the format of ``configs/``); the job reads the application's
``args`` (model, engine, media, serving limits) and ``runtime_env``, so batch and online serving
load the same model with the same engine settings and media policy. Input and output are OpenAI
Batch API JSONL (see :mod:`serve_app.batch.io` and docs/batch.md).

How it runs:

* the driver (this process; under ``ray job submit`` it runs on the head node) scans the input,
  refuses duplicate ``custom_id``s, reads what an earlier run already wrote to the output (resume),
  and keeps at most ``--max-in-flight`` requests outstanding;
* ``--preprocess-workers`` CPU actors parse and validate each line and run
  :class:`~serve_app.preprocess.preparer.MediaPreparer` (media fetch/decode/resize);
* ``--engines`` engine actors each build :class:`~serve_app.engine.runtime.EngineRuntime` inside a
  placement group made from :func:`serve_app.engine.placement.engine_placement` (the same bundles and
  strategy as an engine replica of the Serve app: STRICT_PACK over TP×PP GPUs); the preprocessed
  prompt goes from the CPU actor to the engine actor through the object store, never via the driver;
* finished records are appended to the output as whole lines (write + fsync) and a progress line
  with throughput is printed every ``--progress-interval`` seconds (``ray job logs --follow``).

Exit status: 0 when every line has an output record (some may be errors), 1 when the job stopped
early (engine failure; rerun to resume), 2 for bad arguments, config or input (duplicates).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import yaml

from serve_app.app_config import AppConfig, ConfigError, parse_app_config
from serve_app.batch.io import (
    InputScan,
    JsonlAppender,
    OutputCorrupt,
    OutputLocked,
    Progress,
    ScannedLine,
    iter_lines,
    line_error_record,
    recover_output,
    scan_input,
)
from serve_app.batch.steps import (
    BatchPreprocessor,
    EngineUnavailable,
    error_record,
    new_request_id,
    run_on_engine,
)
from serve_app.errors import EngineError, to_serve_error
from serve_app.engine import cache_env
from serve_app.engine.placement import engine_placement

logger = logging.getLogger("serve_app.batch")

APP_IMPORT_PATH = "serve_app.app:build_app"


class BatchError(Exception):
    """Bad arguments, config or input: nothing was run (exit status 2)."""


class BatchAborted(Exception):
    """The job stopped part-way (exit status 1); what is in the output is complete, rerun resumes."""


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class BatchApp:
    name: str
    config: AppConfig
    runtime_env: dict[str, Any]
    preprocess_cpus: float | None  # the Preprocessor deployment's ray_actor_options.num_cpus


def load_app(path: str, app_name: str | None = None) -> BatchApp:
    """The application (``serve_app.app:build_app``) of a Serve config file, validated the way
    ``serve deploy`` and ``build_app`` validate it."""
    from ray.serve.schema import ServeDeploySchema

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise BatchError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise BatchError(f"--config {path}: not valid YAML: {exc}") from None
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - pydantic's message names the field
        raise BatchError(f"--config {path}: not a valid Serve config: {exc}") from None
    apps = [a for a in schema.applications if a.import_path == APP_IMPORT_PATH]
    if app_name is not None:
        apps = [a for a in apps if a.name == app_name]
    if len(apps) != 1:
        names = [a.name for a in schema.applications if a.import_path == APP_IMPORT_PATH]
        which = f"named {app_name!r} " if app_name else ""
        raise BatchError(f"--config {path}: expected exactly one application {which}with import_path "
                         f"{APP_IMPORT_PATH!r}, found {names}; pick one with --app")
    app = apps[0]
    try:
        config = parse_app_config(app.args)
    except ConfigError as exc:
        raise BatchError(f"--config {path}: {exc}") from None
    pre_cpus = None
    for d in app.deployments:
        opts = getattr(d, "ray_actor_options", None)
        if d.name == "Preprocessor" and opts is not None:
            pre_cpus = opts.get("num_cpus") if isinstance(opts, dict) else getattr(opts, "num_cpus", None)
    return BatchApp(app.name, config, dict(app.runtime_env or {}), pre_cpus)


def actor_runtime_env(app_runtime_env: dict[str, Any]) -> dict[str, Any]:
    """The app's runtime_env for the batch actors. ``working_dir``/``py_modules`` are paths on the
    machine that ran ``serve deploy``; the job's own (``ray job submit --working-dir``) is used
    instead. ``env_vars`` merge with the job's (Ray merges env_vars; other fields override)."""
    return {k: v for k, v in app_runtime_env.items() if k not in ("working_dir", "py_modules")}


# ----------------------------------------------------------------------------- actors
def _define_actors():
    import ray

    @ray.remote
    class PreprocessWorker:
        """Line → validated request → prepared prompt (chat template + media), on CPU."""

        def __init__(self, config: AppConfig) -> None:
            self._pre = BatchPreprocessor(config)

        def ready(self) -> bool:
            return True

        async def prepare_line(self, raw: bytes, line: int):
            return await self._pre.prepare_line(raw, line)

    @ray.remote
    class EngineWorker:
        """One vLLM engine, built exactly as the Serve engine replica builds it, in its placement group."""

        def __init__(self, config: AppConfig, pg) -> None:
            from serve_app.engine.runtime import EngineRuntime

            self._runtime = EngineRuntime(config, placement_group=pg)
            self._model = config.model.name

        async def ready(self) -> dict[str, Any]:
            ctx = ray.get_runtime_context()
            base = self._runtime.cache_base
            return {"max_model_len": self._runtime.max_model_len, "node_id": ctx.get_node_id(),
                    "pid": os.getpid(), "cache_base": str(base) if base else None,
                    "cache_env": {k: os.environ[k] for k in cache_env.CACHE_SUBDIRS if k in os.environ},
                    "start_phases": dict(self._runtime.start_phases)}

        async def run(self, item) -> dict[str, Any]:
            return await run_on_engine(self._runtime, item, self._model)

    return PreprocessWorker, EngineWorker


class _Pool:
    """Least-outstanding choice among actors."""

    def __init__(self, actors: list[Any]) -> None:
        self.actors = actors
        self.load = [0] * len(actors)

    def take(self) -> int:
        i = min(range(len(self.actors)), key=self.load.__getitem__)
        self.load[i] += 1
        return i

    def release(self, i: int) -> None:
        self.load[i] -= 1


def release(ray: Any, actors: list[Any], pgs: list[Any]) -> None:
    """Kill the actors and remove their placement groups, best effort (teardown after a run or a
    failure)."""
    from ray.util.placement_group import remove_placement_group

    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001
            pass
    for pg in pgs:
        try:
            remove_placement_group(pg)
        except Exception:  # noqa: BLE001
            pass


def start_engines(EngineWorker: Any, config: AppConfig, runtime_env: dict[str, Any], count: int, name: str,
                  placement_timeout: float, pgs: list[Any]) -> list[Any]:
    """``count`` engine actors, each in its own placement group made exactly as the Serve engine
    replica's (same bundles, strategy, bundle 0 for the actor, child tasks captured). The groups are
    appended to ``pgs`` as they are created (the caller removes them). Raises :class:`BatchAborted`
    when a group cannot be placed within ``placement_timeout`` seconds."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    placement = engine_placement(config.engine)
    t0 = time.monotonic()
    for i in range(count):
        pgs.append(placement_group([dict(b) for b in placement.bundles], strategy=placement.strategy,
                                   name=f"{name}-engine-{i}"))
    say(f"engine placement: {count} x {placement.strategy} {placement.bundles}")
    for i, pg in enumerate(pgs):
        while not pg.wait(timeout_seconds=30):
            waited = time.monotonic() - t0
            if waited > placement_timeout:
                raise BatchAborted(f"engine {i}: placement group {placement.bundles} ({placement.strategy}) "
                                   f"not placed after {waited:.0f}s; the cluster lacks a node with these "
                                   "resources (or the autoscaler cannot add one)")
            say(f"engine {i}: waiting for resources {placement.bundles} ({placement.strategy}), "
                f"{waited:.0f}s so far")
    return [
        EngineWorker.options(
            num_cpus=placement.replica_num_cpus,
            num_gpus=placement.replica_num_gpus,
            max_restarts=0,
            runtime_env=runtime_env or None,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=0,
                placement_group_capture_child_tasks=True),
            name=f"{name}-engine-{i}",
        ).remote(config, pg)
        for i, pg in enumerate(pgs)
    ]


# ----------------------------------------------------------------------------- driver
@dataclass
class Options:
    config: str
    input: str
    output: str
    app: str | None = None
    engines: int = 1
    preprocess_workers: int = 2
    preprocess_cpus: float | None = None
    max_in_flight: int | None = None
    progress_interval: float = 10.0
    placement_timeout: float = 1800.0
    address: str | None = None


def default_max_in_flight(config: AppConfig, engines: int) -> int:
    """Enough to keep every engine's batch full while the next requests are preprocessed, bounded
    because each in-flight request holds its decoded pixels in the object store."""
    seqs = config.engine.engine_kwargs.get("max_num_seqs") or 128
    return engines * max(4, min(2 * int(seqs), 512))


def say(msg: str) -> None:
    print(f"[batch] {msg}", flush=True)


def run(opts: Options) -> dict[str, Any]:
    app = load_app(opts.config, opts.app)
    config = app.config
    if opts.engines < 1 or opts.preprocess_workers < 1:
        raise BatchError("--engines and --preprocess-workers must be at least 1")
    try:
        scan = scan_input(opts.input, max_bytes=config.serving.max_request_bytes)
    except OSError as exc:
        raise BatchError(f"--input {opts.input}: {exc.strerror}") from None
    if scan.duplicates:
        raise BatchError(f"--input {opts.input}: refusing to run: {scan.duplicate_report()}. "
                         "custom_id must be unique within a batch (it is how results are matched and resumed).")
    try:
        resume = recover_output(opts.output)
    except OutputCorrupt as exc:
        raise BatchError(str(exc)) from None
    if resume.truncated_bytes:
        say(f"output: cut off a torn last line ({resume.truncated_bytes} bytes) left by an interrupted run")
    todo = [s for s in scan.lines if not resume.is_done(s)]
    already = len(scan.lines) - len(todo)
    requests = [s for s in todo if s.error is None]
    say(f"input {opts.input}: {len(scan.lines)} lines ({scan.requests} requests, {scan.line_errors} invalid lines"
        f"{f', {scan.blank_lines} blank' if scan.blank_lines else ''}); already in {opts.output}: {already}; "
        f"to do now: {len(todo)}")
    try:
        writer = JsonlAppender(opts.output)
    except OutputLocked as exc:
        raise BatchError(str(exc)) from None
    progress = Progress(total=len(todo), already_done=already)
    try:
        errors = [line_error_record(s.error) for s in todo if s.error is not None]
        if errors:
            writer.write(errors)
            for rec in errors:
                progress.add(rec)
        if requests:
            _run_requests(opts, app, scan, requests, writer, progress)
    finally:
        writer.close()
    summary = progress.summary()
    say(progress.line())
    say("summary " + json.dumps(summary))
    return summary


def _request_source(path: str, wanted: list[ScannedLine]) -> Iterator[tuple[int, str, bytes]]:
    """(line, custom_id, raw bytes) of the wanted request lines, streamed from the input file."""
    ids = {s.line: s.custom_id for s in wanted}
    for n, raw in iter_lines(path):
        if n in ids:
            yield n, ids[n], raw


def _run_requests(opts: Options, app: BatchApp, scan: InputScan, requests: list[ScannedLine],
                  writer: JsonlAppender, progress: Progress) -> None:
    import ray

    config = app.config
    if not ray.is_initialized():
        ray.init(address=opts.address, logging_level=logging.WARNING, log_to_driver=True)
    PreprocessWorker, EngineWorker = _define_actors()
    runtime_env = actor_runtime_env(app.runtime_env)
    run_id = uuid.uuid4().hex[:8]
    pgs: list[Any] = []
    actors: list[Any] = []
    try:
        t0 = time.monotonic()
        engines = start_engines(EngineWorker, config, runtime_env, opts.engines, f"batch-{run_id}",
                                opts.placement_timeout, pgs)
        actors.extend(engines)
        # ---- preprocessing: plain CPU actors (restarted if one dies; its request is retried once).
        cpus = opts.preprocess_cpus if opts.preprocess_cpus is not None else (app.preprocess_cpus or 1.0)
        pres = [
            PreprocessWorker.options(num_cpus=cpus, max_restarts=-1, max_task_retries=1,
                                     runtime_env=runtime_env or None,
                                     name=f"batch-{run_id}-preprocess-{i}").remote(config)
            for i in range(opts.preprocess_workers)
        ]
        actors.extend(pres)
        engine_ids = {e._actor_id.hex() for e in engines}
        try:
            infos = ray.get([e.ready.remote() for e in engines])
            ray.get([p.ready.remote() for p in pres])
        except ray.exceptions.RayActorError as exc:
            raise BatchAborted(f"an engine or preprocessing actor failed to start: {exc}") from None
        for i, info in enumerate(infos):
            say(f"engine {i} ready on node {info['node_id']} (pid {info['pid']}, max_model_len {info['max_model_len']})")
        say(f"{len(engines)} engine(s) ready in {time.monotonic() - t0:.1f}s; "
            f"{len(pres)} preprocessing worker(s) of {cpus:g} CPU")

        max_in_flight = opts.max_in_flight or default_max_in_flight(config, opts.engines)
        progress.restart_clock()  # throughput and ETA from here, not from the engines' start-up
        _drive(ray, _request_source(opts.input, requests), _Pool(pres), _Pool(engines), engine_ids,
               max_in_flight, writer, progress, opts.progress_interval)
    finally:
        release(ray, actors, pgs)


def _drive(ray, source, pres: _Pool, engines: _Pool, engine_ids: set[str], max_in_flight: int,
           writer: JsonlAppender, progress: Progress, progress_interval: float) -> None:
    pending: dict[Any, tuple[int, int, int, str]] = {}  # out ref → (pre idx, engine idx, line, custom_id)
    exhausted = False
    next_report = time.monotonic() + progress_interval
    while True:
        while not exhausted and len(pending) < max_in_flight:
            try:
                line, cid, raw = next(source)
            except StopIteration:
                exhausted = True
                break
            pi, ei = pres.take(), engines.take()
            pre_ref = pres.actors[pi].prepare_line.remote(raw, line)
            out_ref = engines.actors[ei].run.remote(pre_ref)
            pending[out_ref] = (pi, ei, line, cid)
        if not pending:
            break
        ready, rest = ray.wait(list(pending), num_returns=1, timeout=min(1.0, progress_interval))
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        records = []
        for ref in ready:
            pi, ei, line, cid = pending.pop(ref)
            pres.release(pi)
            engines.release(ei)
            records.append(_collect(ray, ref, cid, line, engine_ids))
        if records:
            writer.write(records)
            for rec in records:
                progress.add(rec)
        now = time.monotonic()
        if now >= next_report:
            say(progress.line(in_flight=len(pending)))
            next_report = now + progress_interval


def _collect(ray, ref, custom_id: str, line: int, engine_ids: set[str]) -> dict[str, Any]:
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        if exc.actor_id in engine_ids or exc.actor_id is None:
            raise BatchAborted(f"an engine actor died (line {line}, custom_id {custom_id!r}): {exc}") from None
        # A preprocessing actor died twice on this request (it is retried once): most likely the
        # request itself (e.g. media too large for the worker's memory).
        return error_record(custom_id, new_request_id(),
                            EngineError(f"the preprocessing worker died while preparing this request: {exc}"))
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EngineUnavailable):
            raise BatchAborted(f"engine unavailable (line {line}, custom_id {custom_id!r}): {cause}") from None
        return error_record(custom_id, new_request_id(), to_serve_error(exc))


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m serve_app.batch",
        description="Run an OpenAI Batch API JSONL file through the serving app's preprocessing and engine "
                    "on a Ray cluster. Resumable: a rerun skips custom_ids already in --output.",
    )
    p.add_argument("--config", required=True, help="Serve config file (as in configs/); its app args are used")
    p.add_argument("--input", required=True, help="input JSONL (OpenAI Batch API request lines)")
    p.add_argument("--output", required=True, help="output JSONL (appended to; a rerun resumes from it)")
    p.add_argument("--app", help="application name in --config (needed only if it has several)")
    p.add_argument("--engines", type=int, default=1, help="engine actors, one placement group each (default 1)")
    p.add_argument("--preprocess-workers", type=int, default=2, help="CPU preprocessing actors (default 2)")
    p.add_argument("--preprocess-cpus", type=float, default=None,
                   help="CPUs per preprocessing actor (default: the config's Preprocessor num_cpus, else 1)")
    p.add_argument("--max-in-flight", type=int, default=None,
                   help="most requests outstanding at once (default: 2 x engine max_num_seqs per engine, <= 512)")
    p.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress lines")
    p.add_argument("--placement-timeout", type=float, default=1800.0,
                   help="give up if an engine's placement group is not placed within this many seconds")
    p.add_argument("--address", default=None, help="Ray address (default: the job's cluster, or RAY_ADDRESS)")
    a = p.parse_args(argv)
    if a.max_in_flight is not None and a.max_in_flight < 1:
        p.error("--max-in-flight must be at least 1")
    return Options(config=a.config, input=a.input, output=a.output, app=a.app, engines=a.engines,
                   preprocess_workers=a.preprocess_workers, preprocess_cpus=a.preprocess_cpus,
                   max_in_flight=a.max_in_flight, progress_interval=a.progress_interval,
                   placement_timeout=a.placement_timeout, address=a.address)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv)

    def _terminate(signum, frame):  # `ray job stop` sends SIGTERM: unwind so the output is closed cleanly
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run(opts)
    except BatchError as exc:
        print(f"[batch] error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BatchAborted as exc:
        print(f"[batch] stopped: {exc}. Everything in the output is complete; rerun the same command to "
              "resume.", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("[batch] interrupted; rerun the same command to resume.", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
