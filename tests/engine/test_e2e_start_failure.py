"""An engine that cannot start fails fast and says why: real `serve run`, vLLM's CPU build, TP=2
(the weights are loaded in worker subprocesses, so the cause is only in what they printed)."""

import shutil
import time

import pytest

from bench.serve_bench.servers import ENGINE_REPLICA_STARTED, serve_status, wait_engine_given_up
from tests.conftest import ROOT, ServeProcess, free_port, write_local_config

pytestmark = pytest.mark.e2e


def test_a_checkpoint_that_cannot_load_is_given_up_after_the_configured_starts_with_its_cause(
        tmp_path, tiny_model_dir):
    import os

    bad = tmp_path / "tiny-truncated"
    shutil.copytree(tiny_model_dir, bad)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # header intact, tensors cut off

    port = free_port()
    config = write_local_config(tmp_path / "serve.yaml", port, {
        "model": {"path": str(bad), "served_name": "qwen2.5-vl-tiny"},
        "engine": {"tensor_parallel_size": 2, "replica_cpus": 0.25, "worker_cpus": 0.5, "start_attempts": 2},
    })
    logs = ROOT / "build" / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"serve-start-failure-{time.strftime('%Y%m%d-%H%M%S')}-{port}.log"
    proc = ServeProcess(config, log, port, dict(os.environ, PYTHONUNBUFFERED="1", RAY_ADDRESS="local",
                                                RAY_DEDUP_LOGS="0"))
    try:
        gave_up = wait_engine_given_up(log, proc.proc, timeout=900)
        assert gave_up is not None, f"Serve did not give the Engine up:\n{proc.log_tail()}"
        status = serve_status(log.read_text(errors="replace"))
        time.sleep(15)  # a restart loop would add replicas now
        text = log.read_text(errors="replace")
    finally:
        proc.stop()

    assert len(ENGINE_REPLICA_STARTED.findall(text)) == 2, proc.log_tail()
    app = status["applications"]["qwen-vl"]
    engine = app["deployments"]["Engine"]
    assert app["status"] == "DEPLOY_FAILED" and engine["status"] == "DEPLOY_FAILED", status
    # One line with the root cause that the worker printed, not vLLM's "see root cause above".
    cause = next(line for line in engine["message"].splitlines() if "vLLM engine failed to start:" in line)
    assert "SafetensorError" in cause and "root cause above" not in cause, engine["message"]
