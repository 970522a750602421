"""The warm-up job: `python -m serve_app.engine.warmup CONFIG` (unit parts, and end to end on vLLM's CPU build)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import yaml

from serve_app.engine import cache_env, warmup

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_parse_args_sizes_and_no_media():
    o = warmup.parse_args(["c.yaml", "--image", "1280x720", "--image", "448x448", "--video", "320x240x30"])
    assert o.images == [(1280, 720), (448, 448)] and o.videos == [(320, 240, 30)]
    o = warmup.parse_args(["c.yaml", "--no-media", "--app", "qwen-vl"])
    assert (o.images, o.videos, o.app) == ([], [], "qwen-vl")
    with pytest.raises(SystemExit):
        warmup.parse_args(["c.yaml", "--image", "1280"])


def test_requests_cover_text_sampling_images_and_videos_and_pass_the_apps_checks():
    from serve_app.app_config import parse_app_config
    from serve_app.batch.steps import validate_body

    opts = warmup.Options(config="c.yaml", images=[(64, 48)], videos=[(64, 48, 8)])
    lines = warmup.warmup_requests("m", opts)
    assert [line["custom_id"] for line in lines] == ["text", "text-sampled", "image-64x48", "video-64x48x8"]
    assert lines[1]["body"]["top_k"] == 20 and lines[1]["body"]["temperature"] > 0
    config = parse_app_config({"model": {"path": "/m", "served_name": "m"}})
    for line in lines:
        validate_body(line["body"], config)  # raises on anything the app would refuse


@pytest.mark.e2e
def test_warmup_job_starts_the_engine_and_fills_the_keyed_cache(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs/local.yaml").read_text())
    cache_root = tmp_path / "engine-cache"
    cfg["applications"][0]["args"]["engine"]["cache_dir"] = str(cache_root)
    cfg_path = tmp_path / "warmup.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "summary.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS="local")
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "serve_app.engine.warmup", str(cfg_path), "--image", "640x480",
                           "--video", "160x120x30", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    print(f"warm-up took {time.monotonic() - t:.1f}s: {json.dumps(summary)[:2000]}")
    assert [r["status"] for r in summary["requests"]] == [200] * 4
    assert all(r["prompt_tokens"] and r["completion_tokens"] for r in summary["requests"])
    # The keyed directory of this node's stack, with every sub-directory and the marker.
    key = cache_env.cache_key(cache_env.probe_stack("CPU"))
    base = cache_root / key
    assert summary["cache_base"] == str(base)
    assert sorted(p.name for p in base.iterdir()) == sorted([*cache_env.CACHE_SUBDIRS.values(), cache_env.MARKER])
    marker = json.loads((base / cache_env.MARKER).read_text())
    assert marker["last_start"]["by"] == "warmup" and marker["key"] == key
    # What the engine process itself saw (reported by the engine actor, after vLLM started).
    assert summary["engine_env"] == {var: str(base / sub) for var, sub in cache_env.CACHE_SUBDIRS.items()}
    assert set(summary["cache_inventory"]) == set(cache_env.CACHE_SUBDIRS.values())
    # vLLM's CPU build (0.32, enforce_eager) writes one small file under VLLM_CACHE_ROOT; no compiler runs.
    assert summary["cache_inventory"]["vllm"]["files"] >= 1
    phases = summary["engine_start_phases"]
    assert {"model_path", "import_vllm", "engine_config", "async_llm", "renderer"} <= set(phases)
