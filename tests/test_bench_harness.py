"""End to end on CPU: the GPU serving benchmark's harness (bench/serve_bench) runs `vllm serve` and the
app (`serve run`) one after the other on the tiny checkpoint, drives both with the same text workload
and renders the comparison — the same command the lead runs on the GPU machine, at toy scale."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _pids_with(marker: str) -> list[int]:
    needle = f"SERVE_BENCH_RUN={marker}".encode()
    out = []
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.mark.timeout(900)
def test_harness_vllm_and_app_text_end_to_end(tmp_path):
    """~2 x (server start + 8 requests): 3-5 min on 2 cores, almost all of it the two servers starting."""
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, "-m", "bench.serve_bench.harness", "--phase", "build,vllm,app,report",
           "--shape", "tiny", "--device", "cpu", "--workdir", str(work), "--out", str(out),
           "--workloads", "text", "--concurrency", "1,2", "--requests", "4", "--warmup", "1",
           "--max-tokens", "8", "--budget-s", "400"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=880)
    assert proc.returncode == 0, proc.stderr[-6000:]

    results = json.loads((out / "results.json").read_text())
    ray_tmp = (results.get("app") or {}).get("ray_tmp")
    if ray_tmp and not ray_tmp.startswith(str(tmp_path)):  # the short fallback under /tmp
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
    prompt_tokens = {}
    for server in ("vllm", "app"):
        ph = results[server]
        assert not ph.get("error"), ph.get("error")
        assert not _pids_with(ph["marker"]), f"{server}: processes left behind"
        levels = {lv["concurrency"]: lv for lv in ph["levels"]}
        assert set(levels) == {1, 2}
        for lv in levels.values():
            assert (lv["completed"], lv["failed"], lv["short"]) == (4, 0, 0), lv
            assert lv["output_tokens_mean"] == 8 and lv["ttft_ms"]["p50"] > 0 and lv["tpot_ms"]["p50"] > 0
            assert lv["client_cpu"] < 1.0
        prompt_tokens[server] = levels[1]["prompt_tokens_mean"]
        cs = ph["coldstart"]
        assert cs["ready_s"] > 0 and cs["first_token_s"] >= cs["ready_s"]
        assert cs["weights_load_s"] is not None and cs["init_engine_s"] is not None  # parsed from vLLM's log
        assert (out / f"{server}-server.log").stat().st_size > 0
        # Both servers' caches under one keyed root (serve_app/engine/cache_env.py), inventoried.
        cc = ph["compile_cache"]
        assert pathlib.Path(cc["key_dir"]).parent == pathlib.Path(cc["dir"])
        assert set(cc["inventory_after"]) == {"vllm", "inductor", "triton", "flashinfer", "cuda"}
    # the same requests: identical prompt lengths on both servers (~512 tokens)
    assert prompt_tokens["vllm"] == prompt_tokens["app"] and abs(prompt_tokens["app"] - 512) <= 3
    assert results["vllm"]["engine_kwargs"] == results["app"]["engine_kwargs"]
    md = (out / "report.md").read_text()
    assert "| text | 1 | **app / vllm** |" in md and "| text | 2 | **app / vllm** |" in md
    assert "launch → ready" in md
    assert len(list(out.iterdir())) <= 8  # what the GPU machine's $OUT can bring back
