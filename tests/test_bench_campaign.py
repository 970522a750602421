"""The benchmark campaign's pure parts (issue #15): plan and level parsing, pairing and intervals,
the engine-config diff, Prometheus gauges, Poisson arrivals, multi-turn payloads, log timestamps."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve_bench import campaign, campaign_report as cr, coldstart, evidence, loadgen, workloads  # noqa: E402


def test_levels_and_plan_parse():
    lv = campaign.parse_levels("text@1, image@32,image:poisson@0.5/2,multiturn@16")
    assert [x.key for x in lv] == ["text@1", "image@32", "image:poisson@0.5", "image:poisson@2", "multiturn@16"]
    with pytest.raises(ValueError, match="unknown workload"):
        campaign.parse_levels("txt@1")
    with pytest.raises(ValueError, match="expected"):
        campaign.parse_levels("text")
    variants = campaign.parse_variants(["vllm-asc8-lru=--api-server-count 8"])
    assert variants["vllm-asc8"] == ("vllm", ["--api-server-count", "8", "--mm-processor-cache-type", "shm"])
    assert variants["vllm-asc1"] == ("vllm", ["--api-server-count", "1"])
    assert variants["vllm-asc8-lru"] == ("vllm", ["--api-server-count", "8"])
    plan = campaign.parse_plan("warm:vllm-asc1,warm:app,vllm-asc8,app", variants)
    assert [(p.name, p.throwaway) for p in plan] == [("00-warm-vllm-asc1", True), ("01-warm-app", True),
                                                      ("02-vllm-asc8", False), ("03-app", False)]
    with pytest.raises(ValueError, match="unknown server variant"):
        campaign.parse_plan("vllm-asc3", variants)


def test_mean_ci_matches_student_t():
    c = cr.mean_ci([1.0, 2.0, 3.0])
    sd = 1.0
    assert c["mean"] == 2.0 and math.isclose(c["hi"] - 2.0, 4.303 * sd / math.sqrt(3), rel_tol=1e-9)
    assert cr.mean_ci([5.0]) == {"n": 1, "mean": 5.0, "lo": None, "hi": None}
    assert cr.mean_ci([])["mean"] is None


def _launch(seq, variant, levels, throwaway=False, ready=60.0, cfg=None):
    return {"seq": seq, "variant": variant, "server": "app" if variant == "app" else "vllm", "throwaway": throwaway,
            "levels": [{"key": k, "req_per_s": r, "out_tok_per_s": r * 100, "ttft_ms": {"p50": t, "p99": t * 2},
                        "tpot_ms": {"p50": 6.0, "p99": 7.0}, "prompt_tokens_mean": 512, "extra": {"window_s": 60},
                        "slo": {"within_slo": int(r * 60)}} for k, r, t in levels],
            "coldstart": {"ready_s": ready, "timeline": []}, "engine_configs": [cfg or {"model": "m", "seed": "0"}]}


def test_report_pairs_launches_with_the_best_anchor():
    launches = [
        _launch(0, "vllm-asc1", [("text@1", 1.0, 30.0), ("image@32", 2.0, 900.0)], throwaway=True),
        _launch(1, "vllm-asc1", [("text@1", 1.0, 30.0), ("image@32", 2.0, 900.0)]),
        _launch(2, "app", [("text@1", 0.99, 31.0), ("image@32", 3.0, 600.0)]),
        _launch(3, "vllm-asc8", [("text@1", 1.0, 32.0), ("image@32", 2.5, 800.0)]),
        _launch(4, "app", [("text@1", 1.01, 31.0), ("image@32", 3.2, 600.0)]),
        _launch(5, "vllm-asc8", [("text@1", 1.0, 32.0), ("image@32", 2.6, 800.0)]),
    ]
    by = cr.measured(launches)
    assert [r["seq"] for r in by["vllm-asc1"]] == [1]  # the throwaway launch is not measured
    assert cr.best_anchor(by, "image@32") == "vllm-asc8"  # highest req/s
    assert cr.best_anchor(by, "text@1") == "vllm-asc1"  # lowest TTFT at concurrency 1
    c = cr.ratio_ci(by["app"], by["vllm-asc8"], "image@32", "req_per_s")
    assert c["n"] == 2 and math.isclose(c["mean"], (3.0 / 2.5 + 3.2 / 2.6) / 2)
    d = cr.diff_ci(by["app"], by["vllm-asc1"], "text@1", "ttft_p50_ms")
    assert d["n"] == 1 and d["mean"] == 1.0
    text = cr.render({"plan": "p", "levels": "l", "revision": {"commit": "abc", "dirty": False}}, launches)
    assert "| image@32 | vllm-asc8 | **1.215×**" in text and "config check: OK" in text


def test_config_check_fails_on_an_undeclared_difference():
    launches = [_launch(0, "vllm-asc1", [("text@1", 1.0, 30.0)], cfg={"model": "m", "seed": "0"}),
                _launch(1, "app", [("text@1", 1.0, 30.0)], cfg={"model": "m", "seed": "1"})]
    cc = cr.config_check(launches)
    assert not cc["ok"] and cc["by_variant"]["vllm-asc1"]["undeclared"] == {"seed": ["0", "1"]}


def test_engine_config_line_is_split_at_top_level_commas():
    line = ("INFO 11-30 01:02:03 [core.py:77] Initializing a V1 LLM engine (v0.26.0) with config: model='/m', "
            "speculative_config=None, tokenizer='/m', dtype=torch.bfloat16, max_seq_len=8192, "
            "compilation_config={'level': 3, 'cudagraph_capture_sizes': [1, 2, 4], 'pass_config': {'a': 1}}, "
            "served_model_name=bench-model")
    (cfg,) = evidence.engine_configs([line])
    assert cfg["_vllm_version"] == "0.26.0" and cfg["max_seq_len"] == "8192"
    assert cfg["compilation_config"].startswith("{'level': 3") and cfg["served_model_name"] == "bench-model"


def test_engine_gauges_from_both_servers_prometheus_text():
    vllm_text = ('vllm:num_requests_running{engine="0",model_name="m"} 12.0\n'
                 'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
                 'vllm:kv_cache_usage_perc{engine="0"} 0.5\n# HELP x\n')
    ray_text = ('ray_vllm_num_requests_running{Component="x",engine="0"} 7.0\n'
                'ray_vllm_num_requests_waiting{Component="x",engine="0"} 0.0\n')
    assert evidence.parse_engine_gauges(vllm_text) == {"num_requests_running": 12.0, "num_requests_waiting": 3.0,
                                                       "kv_cache_usage_perc": 0.5}
    assert evidence.parse_engine_gauges(ray_text) == {"num_requests_running": 7.0, "num_requests_waiting": 0.0}


def test_poisson_arrivals_rate_and_determinism():
    a = loadgen.poisson_arrivals(10.0, 100.0, seed=3)
    assert a == loadgen.poisson_arrivals(10.0, 100.0, seed=3)
    assert 900 < len(a) < 1100 and all(0 < x < 100 for x in a) and a == sorted(a)


def test_declared_dependencies_read_from_pyproject():
    deps = evidence.declared_dependencies(ROOT / "pyproject.toml")
    assert "simplejpeg" in deps and "ray" in deps and "av" in deps
    assert evidence.missing_dependencies(ROOT / "pyproject.toml") == []  # this venv has them all


def test_log_wallclock_formats():
    import datetime as dt

    t = dt.datetime(2026, 11, 30, 1, 2, 3).timestamp()
    assert coldstart.line_wallclock("INFO 11-30 01:02:03 [core.py:1] x", 2026) == t
    assert coldstart.line_wallclock("INFO 2026-11-30 01:02:03,250 qwen-vl_Engine abc -- engine ready in 3.0s", 0) == t + 0.25
    assert coldstart.line_wallclock("no stamp", 2026) is None


def test_events_from_replica_files_are_timed_by_their_clock(tmp_path):
    import datetime as dt

    launch = dt.datetime(2026, 11, 30, 1, 0, 0).timestamp()
    f = tmp_path / "replica_qwen-vl_Engine_x.log"
    f.write_text("INFO 11-30 01:00:40 [default_loader.py:1] Loading weights took 4.00 seconds\n"
                 "INFO 2026-11-30 01:01:10,000 qwen-vl_Engine x -- engine ready in 60.0s\n")
    ev = coldstart.events_from_files([f], launch)
    assert [(e.key, e.t) for e in ev] == [("loading_weights", 40.0), ("serve_engine_ready", 70.0)]
    merged = coldstart.merge_events([coldstart.LogEvent("loading_weights", 39.5, (4.0,), "")], ev)
    assert [e.key for e in merged] == ["loading_weights", "serve_engine_ready"]


def test_multiturn_conversation_slides_its_image_window(tiny_model_dir, tmp_path):
    shape = workloads.ConversationShape(turns=3, window=2, image_width=64, image_height=48, answer_tokens=8)
    workloads.ensure_conversation_media(tmp_path, [0, 1], shape, workers=1)
    counter = workloads.TokenCounter(tiny_model_dir)
    conv0 = workloads.conversation_bodies(0, shape, model="m", counter=counter, assets=tmp_path, max_tokens=4)
    conv1 = workloads.conversation_bodies(1, shape, model="m", counter=counter, assets=tmp_path, max_tokens=4)
    assert [(u, t) for u, t, _ in conv0] == [(0, 0), (0, 1), (0, 2)]

    def images(body):
        msgs = json.loads(body)["messages"]
        return msgs, [p["image_url"]["url"] for p in msgs[-1]["content"] if p["type"] == "image_url"]

    (m0, i0), (m1, i1), (m2, i2) = (images(b) for _, _, b in conv0)
    assert len(i0) == len(i1) == 2 and i0[1] == i1[0] and i1[1] == i2[0]  # one image recurs per turn
    assert len(m0) == 1 and len(m1) == 3 and len(m2) == 5  # text history grows: (user, assistant) per turn
    assert m2[:3] == m1[:3] or m2[0] == m1[0]
    assert not set(images(conv1[0][2])[1]) & set(i0 + i1 + i2)  # users never share an image
    assert conv0 == workloads.conversation_bodies(0, shape, model="m", counter=counter, assets=tmp_path, max_tokens=4)


def test_bench_readme_carries_the_generated_campaign_reports():
    """bench/README.md's campaign tables are rendered from the committed JSONs, never edited by hand:
    `python -m bench.serve_bench.campaign_report` refreshes them."""
    readme = ROOT / "bench" / "README.md"
    assert cr.readme_blocks(readme.read_text()), "no generated campaign report in bench/README.md"
    assert cr.refresh_readme(readme, check=True) == []


def test_timed_levels_against_a_fake_streaming_server():
    """The time-based closed loop, the conversations and the open loop on a loopback SSE server: who
    is recorded (ramp excluded), concurrency held, turns in order, chunk times and body hashes kept,
    in-flight requests past the drain cut."""
    import asyncio
    import threading

    pytest.importorskip("aiohttp")
    from aiohttp import web

    state = {"inflight": 0, "max_inflight": 0, "order": []}

    async def handler(request):
        body = await request.json()
        state["order"].append(body["messages"][0]["content"])
        state["inflight"] += 1
        state["max_inflight"] = max(state["max_inflight"], state["inflight"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        slow = body["messages"][0]["content"] == "slow"
        for _ in range(3):
            await asyncio.sleep(5.0 if slow else 0.01)
            await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
        await resp.write(b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        state["inflight"] -= 1
        return resp

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    def serve():
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = site._server.sockets[0].getsockname()[1]
        box["runner"] = runner
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    ready.wait(10)
    try:
        cfg = loadgen.LoadConfig(base_url=f"http://127.0.0.1:{box['port']}", max_tokens=3)
        level = loadgen.TimedLevel(ramp_s=0.3, window_s=1.0, drain_s=0.5)

        def body(text):
            return workloads.request_body("m", [{"role": "user", "content": text}], 3)

        bodies = [body(f"r{i}") for i in range(5000)]
        lv, recs = loadgen.run_timed_closed(cfg, "text", 3, bodies, level)
        assert state["max_inflight"] == 3 and lv.completed == len(recs) > 10 and lv.failed == 0
        assert lv.extra["ramp_requests"] > 0 and all(r.start >= min(x.start for x in recs) for r in recs)
        assert recs[0].body_hash == loadgen.body_hash(bodies[recs[0].index]) and len(recs[0].chunk_times) == 3
        assert lv.extra["inter_chunk_ms"]["p50"] >= 5

        state["order"].clear()
        conv = [[(u, k, body(f"u{u}t{k}")) for k in range(3)] for u in range(200)]
        lv, recs = loadgen.run_timed_conversations(cfg, "multiturn", 2, conv, level)
        for u in {int(x[1:].split("t")[0]) for x in state["order"]}:  # each user's turns went in order
            turns = [int(x.split("t")[1]) for x in state["order"] if x.startswith(f"u{u}t")]
            assert turns == sorted(turns)

        lv, recs = loadgen.run_open_loop(cfg, "text", 30.0, [body("slow")] * 3 + bodies, level)
        assert lv.extra["mode"] == "open-poisson" and lv.extra["offered"] > 10
        assert lv.extra["cut_after_window"] >= 1  # the slow ones outlived window + drain
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


def test_ray_temp_dir_keeps_socket_paths_short(tmp_path):
    from bench.serve_bench import launch

    short = launch._ray_tmp(pathlib.Path("/tmp/b"), "20261130-010203")
    assert short == pathlib.Path("/tmp/b/rt-010203")
    deep = tmp_path / ("x" * 60)
    deep.mkdir()
    got = launch._ray_tmp(deep, "20261130-010203")
    try:
        assert len(str(got)) + launch._RAY_SOCKET_SUFFIX <= 107
        assert (deep / "rt-010203").resolve() == got.resolve()
    finally:
        got.rmdir()
