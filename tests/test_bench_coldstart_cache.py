"""Cold-start bench additions (issue 12): the replica's start phases, --workloads none, --cache-root."""

from bench.serve_bench import coldstart, harness, report

PHASES_LINE = ("(ServeReplica:qwen-vl:Engine pid=9) INFO serve_app.engine: engine start phases (s): "
               "process_age_at_init=6.2 model_path=0.0 environment=0.01 import_vllm=21.4 engine_config=1.3 "
               "async_llm=97.5 renderer=0.02")


def test_the_replica_phases_line_is_parsed_into_the_breakdown():
    events = coldstart.parse_text(PHASES_LINE + "\nINFO engine ready in 120.3s: model=/m tp=2\n")
    cs = coldstart.summarize(events, ready_s=150.0)
    assert (cs["replica_process_age_s"], cs["replica_import_vllm_s"], cs["replica_async_llm_s"]) == (6.2, 21.4, 97.5)
    md = report.coldstart_table({"app": {"coldstart": cs}})
    assert "| app replica: import vLLM | — | 21.4 |" in md


def test_workloads_none_and_cache_root(tmp_path):
    args = harness.parse_args(["--phase", "app", "--workdir", str(tmp_path), "--out", str(tmp_path / "o"),
                               "--workloads", "none", "--cache-root", str(tmp_path / "root"), "--device", "cpu"])
    assert args.workload_list == []
    assert harness._cache_dir(args, "app", "x") == tmp_path / "root"
    assert "warmup" in harness.PHASES
