"""Fill a node's engine cache for one Serve config before traffic: ``python -m serve_app warmup``.

    ray job submit --address http://<head>:8265 -- python -m serve_app warmup \\
        configs/qwen2.5-vl-72b-awq-tp4.yaml [--app NAME] [--image 1920x1080] [--video 640x360x60]

(``serve-app warmup`` and ``python -m serve_app.engine.warmup`` run this same module.)

Starts the engine of that config exactly as an Engine replica would — the same
:class:`~serve_app.engine.runtime.EngineRuntime` in a placement group of the same shape
(:func:`serve_app.batch.job.start_engines`, as the batch job does), so the same node type, GPUs,
environment and ``engine.cache_dir`` key — sends a few requests through the app's own preprocessing
(text greedy, text with top-k/top-p sampling, each ``--image`` size, each ``--video``), and exits.
Everything the start and those requests compile (torch.compile, Triton, FlashInfer's JIT, CUDA's
compute cache, vLLM's autotune files) is then under ``<engine.cache_dir>/<key>/`` of the node it ran
on, so the next engine replica there (or on any node sharing that volume) starts warm.

Prints one JSON summary (start seconds, per-request seconds and token counts, the cache directory
and what is in it); exit 0 when every request answered 200, 1 otherwise, 2 for a bad config.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from serve_app.batch.job import (BatchAborted, BatchError, actor_runtime_env, load_app, release, say,
                                 start_engines, _define_actors)
from serve_app.engine import cache_env

CACHE_USER_VAR = "SERVE_APP_CACHE_USER"  # who the marker in the cache directory names as its last user


@dataclass
class Options:
    config: str
    app: str | None = None
    images: list[tuple[int, int]] = field(default_factory=lambda: [(1920, 1080)])
    videos: list[tuple[int, int, int]] = field(default_factory=lambda: [(640, 360, 60)])
    max_tokens: int = 8
    placement_timeout: float = 1800.0
    address: str | None = None
    output: str | None = None


def _size(text: str, n: int) -> tuple[int, ...]:
    parts = text.lower().split("x")
    if len(parts) != n or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {'x'.join(['N'] * n)} (positive integers)")
    return tuple(int(p) for p in parts)


def warmup_requests(model: str, opts: Options) -> list[dict[str, Any]]:
    """OpenAI Batch API lines (the batch job's input format) covering text, sampling, images, videos."""
    from serve_app.dev import synth_media

    def line(cid: str, content: Any, **sampling: Any) -> dict[str, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": content}],
                "max_tokens": opts.max_tokens, **sampling}
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}

    prompt = "Describe, in detail, what a warm cache changes for the start of a service."
    lines = [line("text", prompt, temperature=0),
             # Non-greedy: the top-k/top-p sampling kernels (FlashInfer's on GPUs) run too.
             line("text-sampled", prompt, temperature=0.8, top_p=0.9, top_k=20, seed=0)]
    for i, (w, h) in enumerate(opts.images):
        uri = "data:image/jpeg;base64," + base64.b64encode(synth_media.jpeg(w, h, seed=i)).decode()
        lines.append(line(f"image-{w}x{h}", [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": "What is in this picture?"}], temperature=0))
    for i, (w, h, frames) in enumerate(opts.videos):
        uri = "data:video/mp4;base64," + base64.b64encode(synth_media.video(w, h, frames, seed=i)).decode()
        lines.append(line(f"video-{w}x{h}x{frames}", [{"type": "video_url", "video_url": {"url": uri}},
                                                      {"type": "text", "text": "What happens here?"}], temperature=0))
    return lines


def run(opts: Options) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    app = load_app(opts.config, opts.app)
    config = app.config
    if not config.engine.cache_dir:
        say("warning: args.engine.cache_dir is not set: the caches go to each library's default directory "
            "in the engine's home, which a new pod does not keep; set it (docs/cluster.md)")
    lines = warmup_requests(config.model.name, opts)
    if not ray.is_initialized():
        ray.init(address=opts.address, logging_level=logging.WARNING, log_to_driver=True)
    PreprocessWorker, EngineWorker = _define_actors()
    runtime_env = actor_runtime_env(app.runtime_env)
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), CACHE_USER_VAR: "warmup"}
    name = f"warmup-{uuid.uuid4().hex[:8]}"
    pgs: list[Any] = []
    actors: list[Any] = []
    summary: dict[str, Any] = {"config": opts.config, "app": app.name, "model": config.model.path,
                               "tensor_parallel_size": config.engine.tensor_parallel_size,
                               "cache_dir": config.engine.cache_dir, "requests": []}
    try:
        t0 = time.monotonic()
        engine = start_engines(EngineWorker, config, runtime_env, 1, name, opts.placement_timeout, pgs)[0]
        actors.append(engine)
        pre = PreprocessWorker.options(num_cpus=app.preprocess_cpus or 1.0, runtime_env=runtime_env,
                                       name=f"{name}-preprocess").remote(config)
        actors.append(pre)
        try:
            info = ray.get(engine.ready.remote())
            ray.get(pre.ready.remote())
        except ray.exceptions.RayActorError as exc:
            raise BatchAborted(f"the engine or the preprocessing actor failed to start: {exc}") from None
        summary["engine_start_s"] = round(time.monotonic() - t0, 1)
        summary["node_id"], summary["cache_base"] = info["node_id"], info["cache_base"]
        summary["engine_env"] = info["cache_env"]
        summary["engine_start_phases"] = info["start_phases"]
        say(f"engine ready in {summary['engine_start_s']}s on node {info['node_id']}; caches under "
            f"{info['cache_base'] or '(library defaults)'}")
        for n, request in enumerate(lines, start=1):
            t = time.monotonic()
            record = ray.get(engine.run.remote(pre.prepare_line.remote(json.dumps(request).encode(), n)))
            resp = record.get("response") or {}
            body = resp.get("body") or {}
            usage = body.get("usage") or {}
            row = {"custom_id": request["custom_id"], "status": resp.get("status_code"),
                   "seconds": round(time.monotonic() - t, 2), "prompt_tokens": usage.get("prompt_tokens"),
                   "completion_tokens": usage.get("completion_tokens")}
            if row["status"] != 200:
                row["error"] = (body.get("error") or {}).get("message") or record.get("error")
            summary["requests"].append(row)
            say(f"{row['custom_id']}: {row['status']} in {row['seconds']}s "
                f"({row['prompt_tokens']} prompt tokens){' ' + str(row.get('error')) if row.get('error') else ''}")
        if info["cache_base"]:
            # On the engine's node (bundle 0 of its group), not wherever this driver runs.
            inv = ray.remote(num_cpus=0)(lambda base: cache_env.inventory(__import__("pathlib").Path(base)))
            summary["cache_inventory"] = ray.get(inv.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pgs[0], placement_group_bundle_index=0)).remote(info["cache_base"]))
        summary["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        release(ray, actors, pgs)
    summary["ok"] = bool(summary["requests"]) and all(r["status"] == 200 for r in summary["requests"])
    return summary


def parse_args(argv: list[str] | None = None, prog: str = "python -m serve_app.engine.warmup") -> Options:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="Serve config file (as in configs/); its app's engine is started")
    p.add_argument("--app", help="application name in the config (needed only if it has several)")
    p.add_argument("--image", action="append", type=lambda s: _size(s, 2), metavar="WxH",
                   help="an image request of this size (repeatable; default 1920x1080)")
    p.add_argument("--video", action="append", type=lambda s: _size(s, 3), metavar="WxHxFRAMES",
                   help="a video request: WxH, FRAMES at 30 fps (repeatable; default 640x360x60)")
    p.add_argument("--no-media", action="store_true", help="text requests only")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--placement-timeout", type=float, default=1800.0)
    p.add_argument("--address", default=None, help="Ray address (default: the job's cluster, or RAY_ADDRESS)")
    p.add_argument("--output", help="also write the JSON summary to this file")
    a = p.parse_args(argv)
    opts = Options(config=a.config, app=a.app, max_tokens=a.max_tokens, placement_timeout=a.placement_timeout,
                   address=a.address, output=a.output)
    if a.image:
        opts.images = a.image
    if a.video:
        opts.videos = a.video
    if a.no_media:
        opts.images, opts.videos = [], []
    return opts


def main(argv: list[str] | None = None, prog: str = "python -m serve_app.engine.warmup") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv, prog)
    try:
        summary = run(opts)
    except BatchError as exc:
        print(f"[warmup] error: {exc}", file=sys.stderr, flush=True)
        return 2
    except BatchAborted as exc:
        print(f"[warmup] stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    if opts.output:
        with open(opts.output, "w") as f:
            f.write(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
