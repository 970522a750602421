"""Operators' view, end to end (real `python -m serve_app serve` → Ray Serve → vLLM CPU build):
request ids in bodies, headers and logs; Prometheus metrics scraped from Ray's metrics export port
after real requests, every series of serve_app/observability/metrics.py and vLLM's engine gauges."""

from __future__ import annotations

import base64
import io
import pathlib
import re
import sys
import time

import httpx
import pytest
from PIL import Image

from serve_app.observability import metrics

pytestmark = pytest.mark.e2e

MODEL = "qwen2.5-vl-tiny"
SECRET_PROMPT = "zebra-secret-prompt-4242"


@pytest.fixture(scope="module")
def obs(shared_app):
    """The session's shared app (tests/conftest.py), first of its modules: counters start at zero."""
    return shared_app


def _replica_logs(ray_tmp: pathlib.Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in ray_tmp.glob("ray/session_*/logs/serve/*.log")}


def _png(w: int, h: int, color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def _chat(base, content, headers=None, **extra):
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": content}],
            **extra}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers or {}, timeout=120)


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _value(samples, name: str, **labels) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_request_ids_and_metrics(obs, media_root):
    base = obs.base_url
    # 1. The client's id is the response id and the header; a missing one is generated; a bad one is refused.
    r = _chat(base, SECRET_PROMPT, headers={"X-Request-Id": "obs-test-1"})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "obs-test-1"
    assert r.headers.get_list("x-request-id") == ["obs-test-1"]
    r = _chat(base, "hello")
    assert r.status_code == 200 and r.headers["x-request-id"] == r.json()["id"] and r.json()["id"]
    r = _chat(base, "hello", headers={"X-Request-Id": "x" * 200})
    assert r.status_code == 400 and r.json()["error"]["param"] == "X-Request-Id"
    r = _chat(base, "hello", headers={"X-Request-Id": "bad id with spaces"})
    assert r.status_code == 400
    # 2. Streamed text (TTFT/TPOT over several tokens), images from a data URI (twice: a cache hit)
    # and from a local file, and a bad image (a media error).
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=120, headers={"X-Request-Id": "obs-stream-1"},
                      json={"model": MODEL, "max_tokens": 8, "ignore_eos": True, "stream": True,
                            "messages": [{"role": "user", "content": "count"}]}) as s:
        assert s.status_code == 200 and s.headers["x-request-id"] == "obs-stream-1"
        lines = [ln for ln in s.iter_lines() if ln.startswith("data: {")]
        assert '"id":"obs-stream-1"' in lines[0].replace(" ", "")
    uri = "data:image/png;base64," + base64.b64encode(_png(320, 240)).decode()
    for _ in range(2):
        r = _chat(base, [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "what"}])
        assert r.status_code == 200, r.text
    path = media_root / "obs.png"
    path.write_bytes(_png(200, 150, (200, 40, 40)))
    r = _chat(base, [{"type": "image", "image": str(path)}, {"type": "text", "text": "what"}],
              headers={"X-Request-Id": "obs-image-file"})
    assert r.status_code == 200, r.text
    image_prompt_tokens = r.json()["usage"]["prompt_tokens"]
    r = _chat(base, [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAAAAAA"}}],
              headers={"X-Request-Id": "obs-bad-media"})
    assert r.status_code == 400, r.text

    # /stats: every engine replica (local.yaml runs one) by replica and node, and the totals.
    stats = httpx.get(f"{base}/stats", timeout=30)
    assert stats.status_code == 200, stats.text
    engine = stats.json()["engine"]
    assert engine["num_replicas"] == 1 and engine["unreachable_replicas"] == 0, engine
    (replica,) = engine["replicas"]
    assert replica["replica_id"] and replica["node_id"] and replica["unfinished_requests"] == 0
    assert engine["unfinished_requests"] == sum(r["unfinished_requests"] for r in engine["replicas"])

    # 3. Ray exports every few seconds: poll until the last requests are in.
    deadline = time.monotonic() + 90
    while True:
        m = _scrape(obs.metrics_url)
        done = (_value(m, "ray_serve_app_requests_total", status="400") >= 3
                and _value(m, "ray_serve_app_media_errors_total") >= 1
                and _value(m, "ray_serve_app_stage_seconds_count", stage="e2e") >= 8
                and _value(m, "ray_serve_app_tokens_total", kind="image") > 0
                and any(n.startswith("ray_vllm") for n in m))
        if done or time.monotonic() > deadline:
            break
        time.sleep(2)
    missing = []
    for stage in metrics.STAGES:
        if _value(m, "ray_serve_app_stage_seconds_count", stage=stage) < 1:
            missing.append(f"stage {stage}")
    assert not missing, f"{missing}; got {sorted(n for n in m if 'serve_app' in n)}"
    assert _value(m, "ray_serve_app_requests_total", status="200") >= 6
    assert _value(m, "ray_serve_app_requests_total", status="400") >= 3
    # Plausible values: latencies are positive and below the request timeout; counts add up.
    e2e_sum = _value(m, "ray_serve_app_stage_seconds_sum", stage="e2e")
    assert 0 < e2e_sum < 8 * 120
    ttft_count = _value(m, "ray_serve_app_stage_seconds_count", stage="ttft")
    assert ttft_count >= 6 and _value(m, "ray_serve_app_stage_seconds_sum", stage="ttft") <= e2e_sum
    assert _value(m, "ray_serve_app_stage_seconds_count", stage="media_fetch") >= 4  # 2 data + file + bad
    # Resizing is timed apart from decoding: the data-URI image (once: the second is a cache hit) and the file.
    assert _value(m, "ray_serve_app_stage_seconds_count", stage="media_resize") >= 2
    assert 0 < _value(m, "ray_serve_app_stage_seconds_sum", stage="media_resize") \
        <= _value(m, "ray_serve_app_stage_seconds_sum", stage="preprocess")
    assert _value(m, "ray_serve_app_tokens_total", kind="completion") >= 6 * 4 - 6  # EOS may stop early
    assert _value(m, "ray_serve_app_tokens_total", kind="prompt") >= image_prompt_tokens
    image_tokens = _value(m, "ray_serve_app_tokens_total", kind="image")
    assert 0 < image_tokens < _value(m, "ray_serve_app_tokens_total", kind="prompt")
    assert _value(m, "ray_serve_app_media_fetched_bytes_total", source="data") > 2 * 300
    assert _value(m, "ray_serve_app_media_fetched_bytes_total", source="file") == path.stat().st_size
    assert _value(m, "ray_serve_app_media_cache_total", result="hit") >= 1
    assert _value(m, "ray_serve_app_media_cache_total", result="miss") >= 2
    assert _value(m, "ray_serve_app_media_errors_total", reason="undecodable") + \
        _value(m, "ray_serve_app_media_errors_total", reason="invalid") >= 1
    # vLLM's own engine metrics, through Ray.
    vllm = {n for n in m if n.startswith("ray_vllm")}
    for needle in ("kv_cache_usage", "num_requests_running", "num_requests_waiting"):
        assert any(needle in n for n in vllm), f"no vLLM {needle} series in {sorted(vllm)}"
    assert _value(m, "ray_vllm_request_success_total") >= 6 or any("request_success" in n for n in vllm)

    # 4. The replicas' logs name the request by id (ingress and preprocessor for the refused media; the
    # engine's one line per request for the others), never the prompt or media.
    deadline = time.monotonic() + 30
    while True:
        logs = _replica_logs(obs.ray_tmp)
        with_id = sorted(name for name, text in logs.items() if "obs-bad-media" in text)
        engine_log = "".join(t for n, t in logs.items() if "Engine" in n)
        if (any("Ingress" in n for n in with_id) and any("Preprocessor" in n for n in with_id)
                and "request obs-image-file done:" in engine_log) or time.monotonic() > deadline:
            break
        time.sleep(1)
    ingress_tail = "".join(t[-2000:] for n, t in logs.items() if "Ingress" in n)
    assert any("Ingress" in n for n in with_id) and any("Preprocessor" in n for n in with_id), (with_id, ingress_tail)
    done = {m.group(1): m.group(2) for m in re.finditer(r"request (\S+) done: (.*)", engine_log)}
    assert {"obs-test-1", "obs-stream-1", "obs-image-file"} <= set(done), engine_log[-3000:]
    assert "status=200" in done["obs-test-1"] and "prompt_tokens=" in done["obs-test-1"]
    assert "completion_tokens=8 " in done["obs-stream-1"] and "ttft_s=" in done["obs-stream-1"]
    image_tokens = int(re.search(r"image_tokens=(\d+)", done["obs-image-file"]).group(1))
    assert image_tokens > 0 and f"prompt_tokens={image_prompt_tokens} " in done["obs-image-file"]
    everything = "\n".join(logs.values()) + obs.log_path.read_text(errors="replace")
    assert SECRET_PROMPT not in everything
    assert "AAAAAAAA" not in everything and "base64," not in everything


def test_smoke_command_against_the_server(obs):
    """`python -m serve_app smoke URL`: a text and an image request, answers, token counts, timings."""
    import subprocess

    r = subprocess.run([sys.executable, "-m", "serve_app", "smoke", obs.base_url, "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"model: {MODEL}" in out
    for name in ("text", "image"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}: "))
        assert "FAILED" not in line
    counts = [ln for ln in out.splitlines() if "prompt_tokens=" in ln]
    assert len(counts) == 2 and all("completion_tokens=4" in ln and "ttft=" in ln for ln in counts), out
    text_prompt = int(counts[0].split("prompt_tokens=")[1].split()[0])
    image_prompt = int(counts[1].split("prompt_tokens=")[1].split()[0])
    assert image_prompt > text_prompt + 100  # 448×336 → 16×12 = 192 image tokens
