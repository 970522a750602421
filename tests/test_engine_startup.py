"""A failed engine start is reported as its root cause, in one line."""

import os
import subprocess
import sys

from serve_app.engine.startup import StartupLog, root_cause

ENGINE_CORE_CRASH = """\
INFO 11-29 12:00:00 [core.py:90] Initializing a V1 LLM engine
(EngineCore_DP0 pid=4242) ERROR 11-29 12:00:31 [core.py:1010] EngineCore failed to start.
(EngineCore_DP0 pid=4242) Traceback (most recent call last):
(EngineCore_DP0 pid=4242)   File "vllm/v1/engine/core.py", line 1000, in run_engine_core
(EngineCore_DP0 pid=4242)     engine_core = EngineCoreProc(*args, **kwargs)
(EngineCore_DP0 pid=4242) torch.AcceleratorError: CUDA error: an illegal memory access was encountered
(EngineCore_DP0 pid=4242) Search for `cudaErrorIllegalAddress' in https://docs.nvidia.com/cuda/ for more information.
Traceback (most recent call last):
  File "serve_app/engine_runtime.py", line 80, in __init__
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""

RAY_WORKER_CHAIN = """\
(RayWorkerWrapper pid=77, ip=10.1.2.3) Traceback (most recent call last):
(RayWorkerWrapper pid=77, ip=10.1.2.3)   File "loader.py", line 3, in load
(RayWorkerWrapper pid=77, ip=10.1.2.3) safetensors_rust.SafetensorError: Error while deserializing header: invalid JSON
(RayWorkerWrapper pid=77, ip=10.1.2.3)
(RayWorkerWrapper pid=77, ip=10.1.2.3) The above exception was the direct cause of the following exception:
(RayWorkerWrapper pid=77, ip=10.1.2.3)
(RayWorkerWrapper pid=77, ip=10.1.2.3) Traceback (most recent call last):
(RayWorkerWrapper pid=77, ip=10.1.2.3)   File "worker.py", line 9, in init
(RayWorkerWrapper pid=77, ip=10.1.2.3) RuntimeError: failed to load model weights
"""


def test_the_child_process_cause_wins_over_the_generic_wrapper():
    assert root_cause(ENGINE_CORE_CRASH) == \
        "torch.AcceleratorError: CUDA error: an illegal memory access was encountered"


def test_chained_tracebacks_give_the_root_and_prefixes_are_stripped():
    assert root_cause(RAY_WORKER_CHAIN) == \
        "safetensors_rust.SafetensorError: Error while deserializing header: invalid JSON"


def test_no_traceback_no_cause():
    assert root_cause("INFO all good\nERROR something without a traceback\nValueError: not in a traceback\n") is None
    assert root_cause("Traceback (most recent call last):\n  File x\nRuntimeError: Engine core initialization "
                      "failed. See root cause above.\n") is None


def test_startup_log_reads_only_what_was_written_after_it_opened(tmp_path):
    # A child process whose stderr is a file, as Ray workers' is: the old traceback before the
    # probe opened must not be taken for this start's cause.
    log = tmp_path / "worker.err"
    code = (
        "import sys, subprocess\n"
        "from serve_app.engine.startup import StartupLog\n"
        "sys.stderr.write('Traceback (most recent call last):\\nOSError: an earlier, unrelated failure\\n')\n"
        "sys.stderr.flush()\n"
        "probe = StartupLog()\n"
        "subprocess.run([sys.executable, '-c', 'import json; json.loads(\"{\")'])\n"
        "try:\n"
        "    raise RuntimeError('Engine core initialization failed. See root cause above.')\n"
        "except RuntimeError as exc:\n"
        "    print(probe.failure_message(exc))\n"
    )
    with open(log, "wb") as err:
        out = subprocess.run([sys.executable, "-c", code], stderr=err, stdout=subprocess.PIPE, text=True,
                             cwd=os.getcwd(), check=True).stdout.strip()
    assert out == "vLLM engine failed to start: json.decoder.JSONDecodeError: Expecting property name enclosed " \
                  "in double quotes: line 1 column 2 (char 1)"


def test_without_a_log_the_innermost_exception_is_the_cause():
    probe = StartupLog(fd=10**6)  # not open: no file to read
    try:
        try:
            raise FileNotFoundError("config.json missing")
        except FileNotFoundError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        assert probe.failure_message(exc) == "vLLM engine failed to start: FileNotFoundError: config.json missing"
