"""Fast tests of the GPU serving benchmark's pure parts (bench/serve_bench): statistics, TPOT, report
rendering, vLLM log parsing, checkpoint shapes/config, engine-argument plumbing, and the load
generator against a fake streaming server."""

from __future__ import annotations

import asyncio
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.serve_bench import coldstart, make_checkpoint as mc, metrics, report, servers, workloads  # noqa: E402


# ------------------------------------------------------------------------------------------ metrics
def test_percentile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0]
    for q in (0, 1, 25, 50, 90, 99, 100):
        assert metrics.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert metrics.percentile([], 50) is None
    assert metrics.percentile([4.0], 99) == 4.0


def test_tpot_math():
    assert metrics.tpot(e2e=1.3, ttft=0.03, output_tokens=128) == pytest.approx(1.27 / 127)
    assert metrics.tpot(1.0, 0.5, 1) is None
    assert metrics.tpot(None, 0.5, 10) is None
    r = metrics.RequestRecord(index=0, start=10.0, ttft=0.2, e2e=2.2, output_tokens=11, ok=True)
    assert r.tpot == pytest.approx(0.2) and r.end == pytest.approx(12.2)


def test_aggregate_counts_rates_and_failures():
    recs = [metrics.RequestRecord(index=i, start=float(i), ttft=0.1 * (i + 1), e2e=1.0 + 0.1 * (i + 1),
                                  output_tokens=11, prompt_tokens=500, ok=True) for i in range(4)]
    recs.append(metrics.RequestRecord(index=9, start=0.5, e2e=0.01, error="HTTP 500: boom"))
    recs[1].output_tokens = 5  # a short one
    lv = metrics.aggregate("text", 2, recs, max_tokens=11, client_cpu=0.25, loop_lag_ms_p99=1.5, wall=(0.0, 5.0))
    assert (lv.requests, lv.completed, lv.failed, lv.short) == (5, 4, 1, 1)
    assert lv.req_per_s == pytest.approx(4 / 5.0)
    assert lv.out_tok_per_s == pytest.approx((11 * 3 + 5) / 5.0)
    assert lv.ttft_ms["p50"] == pytest.approx(250.0)
    assert lv.tpot_ms["p50"] is not None and lv.tpot_ms["p50"] == pytest.approx(100.0)
    assert lv.errors == ["HTTP 500: boom"] and lv.prompt_tokens_mean == 500
    assert metrics.ratio(2.0, 4.0) == 0.5 and metrics.ratio(1.0, 0) is None and metrics.ratio(None, 1) is None


# ------------------------------------------------------------------------------------------ report
def _level(workload, c, rps, tps, ttft50, ttft99, tpot50, tpot99, prompt=512, failed=0, cpu=0.1):
    return {"workload": workload, "concurrency": c, "requests": 10, "completed": 10 - failed, "failed": failed,
            "short": 0, "duration_s": 1.0, "req_per_s": rps, "out_tok_per_s": tps,
            "ttft_ms": {"p50": ttft50, "p99": ttft99}, "tpot_ms": {"p50": tpot50, "p99": tpot99},
            "e2e_ms": {}, "prompt_tokens_mean": prompt, "output_tokens_mean": 128, "client_cpu": cpu,
            "loop_lag_ms_p99": 1.0, "errors": ["HTTP 503"] if failed else [], "extra": {}}


def test_report_table_ratios_and_warnings():
    results = {
        "vllm": {"levels": [_level("text", 1, 1.0, 128, 20.0, 30.0, 6.0, 7.0),
                            _level("image", 16, 5.0, 640, 1400.0, 3500.0, 7.5, 9.0, prompt=5500)]},
        "app": {"levels": [_level("text", 1, 0.99, 126.7, 23.0, 31.0, 6.1, 7.2),
                           _level("image", 16, 6.5, 832, 1000.0, 2000.0, 7.0, 8.0, prompt=5400, failed=1, cpu=0.9)]},
        "bw": {"copy_gbps_best": 3000.0, "copy_gbps_median": 2900.0, "iters": 20, "device": "cuda",
               "device_name": "H100", "decode_bytes": 13.06e9, "bound_tpot_ms": 4.353, "bound_tok_per_s": 229.7},
    }
    rows = report.comparison_rows(results)
    assert [(r["workload"], r["concurrency"]) for r in rows] == [("text", 1), ("image", 16)]
    assert rows[0]["ratio"]["req_per_s"] == pytest.approx(0.99)
    assert rows[1]["ratio"]["req_per_s"] == pytest.approx(1.3)
    assert rows[0]["ttft_p50_delta_ms"] == pytest.approx(3.0)
    md = report.render(results)
    assert "| text | 1 | **app / vllm** | **0.990×** | **0.990×** | 1.150× (+3.0 ms) / 1.033× |" in md
    assert "| image | 16 | **app / vllm** | **1.300×** | **1.300×** |" in md
    warns = "\n".join(report.warnings_for(rows))
    assert "1 failed request" in warns and "0.90 cores" in warns and "prompt tokens differ" in warns
    assert "% of bound" in md and "| vllm serve | text | 6.00 | 167 | 73% |" in md


def test_report_with_one_phase_only():
    md = report.render({"vllm": {"levels": [_level("text", 1, 1.0, 128, 20.0, 30.0, 6.0, 7.0)]}})
    assert "| text | 1 | app (serve run) | _not run_ |" in md and "app / vllm" not in md


# ------------------------------------------------------------------------------------------ log parsing
SAMPLE_LOG = """\
(APIServer pid=1) INFO 11-25 10:00:01 [api_server.py:1] vLLM API server version 0.26.0
(EngineCore_DP0 pid=2) INFO 11-25 10:00:10 [core.py:93] Initializing a V1 LLM engine (v0.26.0) with config: ...
(EngineCore_DP0 pid=2) INFO 11-25 10:00:15 [default_loader.py:267] Loading weights took 2.10 seconds
(EngineCore_DP0 pid=2) INFO 11-25 10:00:15 [gpu_model_runner.py:2392] Model loading took 15.6193 GiB and 2.412345 seconds
(EngineCore_DP0 pid=2) INFO 11-25 10:00:25 [backends.py:539] Dynamo bytecode transform time: 9.80 s
(EngineCore_DP0 pid=2) INFO 11-25 10:00:45 [backends.py:194] Compiling a graph for dynamic shape takes 19.95 s
(EngineCore_DP0 pid=2) INFO 11-25 10:00:49 [monitor.py:34] torch.compile takes 29.75 s in total
(EngineCore_DP0 pid=2) INFO 11-25 10:00:52 [monitor.py:34] torch.compile took 3.75 s in total
(EngineCore_DP0 pid=2) INFO 11-25 10:00:55 [gpu_worker.py:298] Available KV cache memory: 48.31 GiB
(EngineCore_DP0 pid=2) INFO 11-25 10:00:55 [kv_cache_utils.py:864] GPU KV cache size: 904,768 tokens
(EngineCore_DP0 pid=2) INFO 11-25 10:00:55 [kv_cache_utils.py:868] Maximum concurrency for 8,192 tokens per request: 110.44x
(EngineCore_DP0 pid=2) INFO 11-25 10:01:02 [gpu_model_runner.py:3118] Graph capturing finished in 7 secs, took 0.52 GiB
(EngineCore_DP0 pid=2) INFO 11-25 10:03:00 [core.py:218] init engine (profile, create kv cache, warmup model) took 165.20 s (compilation: 33.50 s — language_model: 29.75 s, encoder: 3.75 s)
(APIServer pid=1) INFO:     Application startup complete.
"""


def test_log_parsing_on_sample_lines():
    events = coldstart.parse_text(SAMPLE_LOG)
    s = coldstart.summarize(events, ready_s=244.0, first_token_s=244.3)
    assert s["weights_load_s"] == 2.10 and s["model_loading_s"] == pytest.approx(2.412345)
    assert s["model_gib"] == pytest.approx(15.6193)
    assert s["dynamo_s"] == 9.80 and s["inductor_compile_s"] == 19.95
    assert s["torch_compile_total_s"] == pytest.approx(33.5)  # LM (old wording) + encoder (new wording)
    assert s["kv_cache_gib"] == 48.31 and s["kv_cache_tokens"] == 904768
    assert s["cudagraph_s"] == 7 and s["cudagraph_gib"] == 0.52
    assert s["init_engine_s"] == 165.20 and s["init_engine_compile_s"] == 33.50
    assert s["ready_s"] == 244.0 and s["first_token_s"] == 244.3
    # offline parsing has no arrival times: the timeline holds only the measured points
    assert [x["event"] for x in s["timeline"]] == ["ready (GET /v1/models = 200)", "first token"]


def test_log_parsing_variants():
    assert coldstart.parse_line("Model loading took 0.0123 GiB memory and 0.511 seconds") == [
        ("model_loading", (0.0123, 0.511))]
    assert coldstart.parse_line("init engine (profile, create kv cache, warmup model) took 0.48 seconds") == [
        ("init_engine", (0.48,))]
    assert coldstart.parse_line("(ServeReplica:qwen-vl:Engine pid=5) INFO x [core.py:1] init engine (profile, "
                                "create kv cache, warmup model) took 9.00 s (compilation: 3.00 s)") == [
        ("init_engine", (9.0, 3.0))]
    assert coldstart.parse_line("Compiling a graph for compile range (1, 8192) takes 4.50 s") == [
        ("graph_compile", (4.5,))]
    assert coldstart.parse_line("nothing here") == []


def test_log_follower_timestamps_lines(tmp_path):
    import time

    log = tmp_path / "x.log"
    log.write_text("")
    f = coldstart.LogFollower(log, time.monotonic()).start()
    time.sleep(0.3)
    with open(log, "a") as fh:
        fh.write("INFO Loading weights took 1.50 seconds\npartial line without newline")
    time.sleep(0.6)
    f.stop()
    assert [(e.key, e.values) for e in f.events] == [("loading_weights", (1.5,))]
    assert f.events[0].t is not None and f.events[0].t >= 0.3


# ------------------------------------------------------------------------------------------ checkpoint
def test_tiny_shape_table_equals_tiny_model():
    from serve_app.dev import tiny_model

    specs = mc.tensor_specs(mc.SHAPE_TINY)
    assert [(s.name, s.shape) for s in specs] == list(tiny_model.weight_shapes().items())


def test_7b_config_and_shapes():
    s = mc.SHAPE_7B
    mc.check_shape(s)
    cfg = mc.model_config(s)
    t, v = cfg["text_config"], cfg["vision_config"]
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["num_key_value_heads"],
            t["intermediate_size"]) == (3584, 28, 28, 4, 18944)
    assert (v["depth"], v["hidden_size"], v["num_heads"], v["intermediate_size"], v["out_hidden_size"]) == (
        32, 1280, 16, 3420, 3584)
    assert v["fullatt_block_indexes"] == [7, 15, 23, 31] and v["window_size"] == 112
    assert t["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    assert t["max_position_embeddings"] == 128000 and cfg["tie_word_embeddings"] is False
    assert t["vocab_size"] == 1088 == mc.BENCH_VOCAB_SIZE and mc.TOKENIZER_SIZE == 1046
    assert t["vocab_size"] % 64 == 0 and t["vocab_size"] - 64 < mc.TOKENIZER_SIZE <= t["vocab_size"]
    specs = {x.name: x for x in mc.tensor_specs(s)}
    assert specs["model.layers.27.mlp.down_proj.weight"].shape == (3584, 18944)
    assert specs["model.layers.0.self_attn.k_proj.weight"].shape == (512, 3584)
    assert specs["visual.blocks.31.mlp.gate_proj.weight"].shape == (3420, 1280)
    assert specs["visual.merger.mlp.2.weight"].shape == (3584, 5120)
    assert "model.layers.28.input_layernorm.weight" not in specs
    sz = mc.size_summary(mc.tensor_specs(s))
    # Qwen2.5-VL-7B has 8.29 B parameters; minus 2 x (152064 - 1088) x 3584 vocabulary rows
    assert sz["params"] + 2 * (152064 - 1088) * 3584 == pytest.approx(8.29e9, rel=0.01)
    assert sz["total_bytes"] == 2 * sz["params"]


def test_72b_awq_shapes():
    s = mc.SHAPE_72B_AWQ
    mc.check_shape(s)
    cfg = mc.model_config(s)
    assert cfg["quantization_config"]["quant_method"] == "awq" and cfg["text_config"]["intermediate_size"] == 29696
    specs = {x.name: x for x in mc.tensor_specs(s)}
    q = specs["model.layers.0.mlp.down_proj.qweight"]
    assert (q.shape, q.dtype) == ((29696, 8192 // 8), "int32")
    assert specs["model.layers.0.mlp.down_proj.qzeros"].shape == (29696 // 128, 1024)
    assert specs["model.layers.0.mlp.down_proj.scales"].shape == (232, 8192)
    assert specs["model.layers.0.self_attn.q_proj.bias"].shape == (8192,)
    assert "visual.blocks.0.mlp.gate_proj.weight" in specs  # vision tower stays fp16
    sz = mc.size_summary(mc.tensor_specs(s))
    assert 36e9 < sz["total_bytes"] < 40e9 and sz["params"] == pytest.approx(71.2e9, rel=0.01)


def test_shards_plan_and_dry_run(tmp_path):
    specs = mc.tensor_specs(mc.SHAPE_7B)
    shards = mc.plan_shards(specs, 5_000_000_000)
    assert [x.name for sh in shards for x in sh] == [x.name for x in specs]
    assert all(sum(x.nbytes for x in sh) <= 5_000_000_000 for sh in shards) and len(shards) == 3
    summary = mc.build(tmp_path / "m", mc.SHAPE_7B, dry_run=True, log=lambda m: None)
    assert summary["shards"] == 3 and not list((tmp_path / "m").glob("*.safetensors"))
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert cfg.text_config.hidden_size == 3584 and cfg.vision_config.depth == 32
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert len(tok) == mc.TOKENIZER_SIZE and tok.model_max_length == 128000


def test_small_real_build_writes_sharded_safetensors(tmp_path):
    """7B widths with 1 text layer and 1 vision block, tiny shards: index, zeroed vocab rows, values."""
    from safetensors import safe_open

    from bench.serve_bench import bandwidth

    shape = mc.SHAPE_7B.with_layers(1, 1)
    assert shape.fullatt_block_indexes == (0,)
    out = tmp_path / "m"
    summary = mc.build(out, shape, init="tile", device="cpu", shard_gb=0.2, log=lambda m: None)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted({f for f in index["weight_map"].values()})
    assert len(files) == summary["shards"] > 1 and index["metadata"]["total_size"] == summary["total_bytes"]
    assert bandwidth.decode_bytes(out)["decode_bytes"] == summary["decode_bytes"]
    with safe_open(str(out / index["weight_map"]["lm_head.weight"]), "pt") as f:
        w = f.get_tensor("lm_head.weight")
        assert str(w.dtype) == "torch.bfloat16" and tuple(w.shape) == (1088, 3584)
        assert w[mc.TOKENIZER_SIZE:].abs().sum().item() == 0 and w[:mc.TOKENIZER_SIZE].abs().sum().item() > 0
    with safe_open(str(out / index["weight_map"]["model.norm.weight"]), "pt") as f:
        assert f.get_tensor("model.norm.weight").float().mean().item() == 1.0


# ------------------------------------------------------------------------------------------ engine args
def test_shared_engine_args_are_the_apps_and_become_cli_flags():
    s = servers.BenchSettings(device="gpu", model_dir="/m", max_model_len=8192)
    kw = servers.shared_engine_kwargs(s)
    assert kw["mm_processor_kwargs"] == {"size": {"shortest_edge": 784, "longest_edge": 12845056}}
    assert kw["gpu_memory_utilization"] == 0.85 and "enforce_eager" not in kw
    cli = servers.vllm_cli_args(kw)
    assert "--model" not in cli and "--tensor-parallel-size" not in cli
    i = cli.index("--mm-processor-kwargs")
    assert json.loads(cli[i + 1]) == kw["mm_processor_kwargs"]
    assert cli[cli.index("--max-model-len") + 1] == "8192"
    assert servers.vllm_cli_args({"enforce_eager": True, "enable_prefix_caching": False}) == [
        "--enforce-eager", "--no-enable-prefix-caching"]
    cpu = servers.shared_engine_kwargs(servers.BenchSettings(device="cpu", model_dir="/m", max_model_len=4096))
    assert cpu["enforce_eager"] is True and "gpu_memory_utilization" not in cpu
    assert cpu["mm_processor_kwargs"]["size"]["longest_edge"] == 1280 * 28 * 28


def test_serve_config_is_valid_for_the_app():
    from serve_app.app_config import parse_app_config

    s = servers.BenchSettings(device="gpu", model_dir="/m", tensor_parallel_size=2, max_concurrency=48)
    cfg = servers.serve_config(s, 8123, {"X": "1"})
    app = cfg["applications"][0]
    parsed = parse_app_config(app["args"])
    assert parsed.engine.accelerator == "GPU" and parsed.engine.tensor_parallel_size == 2
    assert parsed.media.allow_hosts == ["127.0.0.1"]
    deps = {d["name"]: d for d in app["deployments"]}
    assert deps["Engine"]["max_ongoing_requests"] >= 48 and "autoscaling_config" not in deps["Preprocessor"]
    assert cfg["http_options"] == {"host": "127.0.0.1", "port": 8123, "request_timeout_s": 900,
                                   "keep_alive_timeout_s": 75}
    cpu = servers.serve_config(servers.BenchSettings(device="cpu", model_dir="/m"), 1, {})
    assert parse_app_config(cpu["applications"][0]["args"]).engine.accelerator == "CPU"


# ------------------------------------------------------------------------------------------ workloads
def test_text_payloads_hit_the_token_target(tiny_model_dir, tmp_path):
    counter = workloads.TokenCounter(tiny_model_dir)
    spec = workloads.WORKLOADS["text"]
    bodies = workloads.build_bodies(spec, [0, 1], model="m", counter=counter, assets=tmp_path, media_base_url=None)
    assert bodies[0] != bodies[1]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for b in bodies:
        req = json.loads(b)
        assert req["ignore_eos"] is True and req["stream_options"] == {"include_usage": True}
        n = len(tok.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=True)["input_ids"])
        assert abs(n - 512) <= 3, n


def test_media_payloads_unique_and_url_variant(tiny_model_dir, tmp_path):
    from dataclasses import replace

    counter = workloads.TokenCounter(tiny_model_dir)
    media = workloads.MediaShape(image_width=64, image_height=48, video_width=64, video_height=48, video_seconds=1,
                                 video_fps=4)
    spec = workloads.WORKLOADS["image"]
    workloads.ensure_media(tmp_path, spec, [0, 1], media, workers=1)
    bodies = workloads.build_bodies(spec, [0, 1], model="m", counter=counter, assets=tmp_path, media_base_url=None)
    parts = json.loads(bodies[0])["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[0] != parts[1] and json.loads(bodies[1])["messages"][0]["content"][0] != parts[0]
    url_spec = replace(workloads.WORKLOADS["video-url"])
    workloads.ensure_media(tmp_path, url_spec, [3], media, workers=1)
    b = workloads.build_bodies(url_spec, [3], model="m", counter=counter, assets=tmp_path,
                               media_base_url="http://127.0.0.1:9", max_tokens=7)
    req = json.loads(b[0])
    assert req["messages"][0]["content"][0] == {"type": "video_url", "video_url": {
        "url": "http://127.0.0.1:9/videos/video-url-000003.mp4"}}
    assert req["max_tokens"] == 7 and (tmp_path / "videos" / "video-url-000003.mp4").stat().st_size > 0


def test_plan_indices_never_repeat():
    plan = workloads.plan_indices([1, 16, 48], [8, 32, 64], warmup=4)
    seen = [i for _, w, t in plan for i in w + t]
    assert len(seen) == len(set(seen)) == 3 * 4 + 8 + 32 + 64
    assert [(c, len(w), len(t)) for c, w, t in plan] == [(1, 4, 8), (16, 4, 32), (48, 4, 64)]


# ------------------------------------------------------------------------------------------ loadgen
def test_loadgen_against_a_fake_streaming_server():
    """TTFT/TPOT/usage/concurrency measured on a fake OpenAI SSE server with known delays."""
    pytest.importorskip("aiohttp")
    from aiohttp import web

    from bench.serve_bench import loadgen

    state = {"inflight": 0, "max_inflight": 0}

    async def handler(request):
        body = await request.json()
        n = body["max_tokens"]
        state["inflight"] += 1
        state["max_inflight"] = max(state["max_inflight"], state["inflight"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.05)  # "prefill"
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
        for i in range(n):
            if i:
                await asyncio.sleep(0.01)
            await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')
        await resp.write(b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":%d}}\n\n' % n)
        await resp.write(b"data: [DONE]\n\n")
        state["inflight"] -= 1
        return resp

    async def bad(request):
        return web.json_response({"error": {"message": "nope"}}, status=400)

    async def main():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        app.router.add_post("/bad/v1/chat/completions", bad)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            body = workloads.request_body("m", [{"role": "user", "content": "hi"}], 11)
            cfg = loadgen.LoadConfig(base_url=f"http://127.0.0.1:{port}", max_tokens=11)
            lv, recs = await loadgen.run_level_async(cfg, "text", 3, [body] * 2, [body] * 9)
            bad_cfg = loadgen.LoadConfig(base_url=f"http://127.0.0.1:{port}/bad", max_tokens=11)
            bad_lv, _ = await loadgen.run_level_async(bad_cfg, "text", 2, [], [body] * 2)
            return lv, recs, bad_lv
        finally:
            await runner.cleanup()

    lv, recs, bad_lv = asyncio.run(main())
    assert lv.completed == 9 and lv.failed == 0 and lv.short == 0 and state["max_inflight"] == 3
    assert 45 <= lv.ttft_ms["p50"] <= 150
    assert 9 <= lv.tpot_ms["p50"] <= 30  # 10 ms between tokens after the first
    assert lv.prompt_tokens_mean == 7 and lv.output_tokens_mean == 11
    assert lv.extra["warmup_requests"] == 2 and 0 <= lv.client_cpu < 2
    assert all(r.chunks == 12 for r in recs)
    assert bad_lv.failed == 2 and bad_lv.errors[0].startswith("HTTP 400")


def test_report_adds_tagged_runs_as_cold_start_columns():
    cold = {"ready_s": 240.0, "first_token_s": 240.5, "torch_compile_total_s": 33.5, "timeline": []}
    warm = {"ready_s": 120.0, "first_token_s": 120.4, "compile_cache_load_s": 3.2, "timeline": []}
    md = report.render({"vllm": {"levels": [], "coldstart": cold}, "app": {"levels": [], "coldstart": cold},
                        "extra_runs": {"app-warm": {"coldstart": warm, "compile_cache": {"mode": "reuse"}}}})
    assert "| seconds | vllm serve | app (serve run) | app-warm (compile cache: reuse) |" in md
    assert "| launch → ready (GET /v1/models 200) | 240.0 | 240.0 | 120.0 |" in md
    assert "|   compiled graphs loaded from cache | — | — | 3.2 |" in md
