"""engine.cache_dir: one keyed cache root for every cache an engine start writes (no Ray, no vLLM)."""

import json

import pytest

from serve_app.app_config import ConfigError, parse_app_config
from serve_app.engine import cache_env
from serve_app.engine.parallel_env import RAY_COPY_VAR, engine_environment

H200 = cache_env.StackFacts(vllm="0.26.0", torch="2.11.0+cu130", cuda="13.0", python="3.12",
                            accelerator="GPU", device="NVIDIA H200")


def _engine(**engine):
    return parse_app_config({"model": {"path": "/m"}, "engine": engine}).engine


def test_the_key_names_vllm_torch_cuda_python_and_the_gpu():
    assert cache_env.cache_key(H200) == "vllm-0.26.0_torch-2.11.0+cu130_py3.12_nvidia-h200"
    # A PyPI torch wheel has no +cuXXX suffix: the CUDA version from torch/version.py is added.
    plain = cache_env.StackFacts("0.26.0", "2.11.0", "12.8", "3.12", "GPU", "NVIDIA H100 80GB HBM3")
    assert cache_env.cache_key(plain) == "vllm-0.26.0_torch-2.11.0+cu12.8_py3.12_nvidia-h100-80gb-hbm3"


@pytest.mark.parametrize("field,value", [("vllm", "0.27.0"), ("torch", "2.12.0+cu130"), ("python", "3.11"),
                                         ("device", "NVIDIA H100 80GB HBM3")])
def test_any_upgrade_changes_the_key(field, value):
    import dataclasses

    assert cache_env.cache_key(dataclasses.replace(H200, **{field: value})) != cache_env.cache_key(H200)


def test_every_cache_goes_under_the_keyed_root():
    env = cache_env.cache_environment("/var/cache/serve-app-engine", "k1")
    assert env == {
        "VLLM_CACHE_ROOT": "/var/cache/serve-app-engine/k1/vllm",
        "TORCHINDUCTOR_CACHE_DIR": "/var/cache/serve-app-engine/k1/inductor",
        "TRITON_CACHE_DIR": "/var/cache/serve-app-engine/k1/triton",
        "FLASHINFER_WORKSPACE_BASE": "/var/cache/serve-app-engine/k1/flashinfer",
        "CUDA_CACHE_PATH": "/var/cache/serve-app-engine/k1/cuda",
        "CUDA_CACHE_MAXSIZE": str(4 * 1024**3),
    }
    assert str(cache_env.cache_base(env)) == "/var/cache/serve-app-engine/k1"


def test_engine_environment_sets_them_and_hands_the_non_vllm_ones_to_the_ray_workers():
    env = engine_environment(_engine(accelerator="GPU", tensor_parallel_size=2, cache_dir="/c"),
                             {"NVSHMEM_DISABLE_NVLS": "1", RAY_COPY_VAR: "MY_VAR"}, cache_key="k")
    assert env["TRITON_CACHE_DIR"] == "/c/k/triton" and env["VLLM_CACHE_ROOT"] == "/c/k/vllm"
    copied = env[RAY_COPY_VAR].split(",")
    assert copied == ["MY_VAR", "NVSHMEM_DISABLE_NVLS", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR",
                      "FLASHINFER_WORKSPACE_BASE", "CUDA_CACHE_PATH", "CUDA_CACHE_MAXSIZE"]
    assert "VLLM_CACHE_ROOT" not in copied  # vLLM copies VLLM_* itself


def test_single_gpu_and_cpu_engines_get_the_cache_too():
    env = engine_environment(_engine(accelerator="CPU", cache_dir="/c"), {}, cache_key="k")
    assert env["FLASHINFER_WORKSPACE_BASE"] == "/c/k/flashinfer" and RAY_COPY_VAR in env


def test_without_cache_dir_nothing_changes():
    assert engine_environment(_engine(accelerator="GPU"), {}) == {}


def test_cache_dir_must_be_absolute():
    with pytest.raises(ConfigError, match=r"args.engine.cache_dir.*absolute"):
        _engine(cache_dir="cache")


def test_the_probe_reads_this_stack_without_importing_torch_or_vllm():
    import sys

    before = {m for m in ("torch", "vllm") if m in sys.modules}
    facts = cache_env.probe_stack("CPU")
    assert {m for m in ("torch", "vllm") if m in sys.modules} == before
    assert facts.vllm != "none" and facts.torch != "none" and facts.device.startswith("cpu-")
    assert facts.cuda is None


def test_gpu_models_from_the_driver(tmp_path):
    for i, model in enumerate(["NVIDIA H200", "NVIDIA H200"]):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
        (tmp_path / f"0000:0{i}:00.0" / "information").write_text(f"Model: \t\t {model}\nIRQ: 1\n")
    assert cache_env.gpu_models(str(tmp_path)) == ["NVIDIA H200"]
    assert cache_env.gpu_models(str(tmp_path / "none")) == []


def test_prepare_creates_the_directories_and_the_marker(tmp_path):
    env = cache_env.cache_environment(str(tmp_path), cache_env.cache_key(H200))
    base = cache_env.prepare(env, H200, who="warmup")
    assert base == tmp_path / "vllm-0.26.0_torch-2.11.0+cu130_py3.12_nvidia-h200"
    assert sorted(p.name for p in base.iterdir()) == sorted([*cache_env.CACHE_SUBDIRS.values(), cache_env.MARKER])
    marker = json.loads((base / cache_env.MARKER).read_text())
    assert marker["stack"]["vllm"] == "0.26.0" and marker["last_start"]["by"] == "warmup"
    assert marker["env"]["CUDA_CACHE_PATH"] == str(base / "cuda")
    (base / "triton" / "abc").mkdir()
    (base / "triton" / "abc" / "k.cubin").write_bytes(b"x" * 10)
    assert cache_env.inventory(base)["triton"] == {"files": 1, "bytes": 10}
    assert cache_env.prepare({}, H200, who="x") is None


def test_the_bench_gives_vllm_serve_and_the_app_the_same_keyed_cache(tmp_path):
    from bench.serve_bench.servers import BenchSettings, app_args, base_env

    settings = BenchSettings(device="cpu", model_dir="/m")
    env = base_env(settings, tmp_path)
    key = cache_env.cache_key(cache_env.probe_stack("CPU"))
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / key / "triton")
    assert "FLASHINFER_WORKSPACE_BASE" in env[RAY_COPY_VAR]
    # The app's replica derives the very same variables from its own engine.cache_dir.
    import dataclasses

    engine = parse_app_config(app_args(dataclasses.replace(settings, cache_dir=str(tmp_path)))).engine
    assert engine.cache_dir == str(tmp_path)
    assert {k: v for k, v in engine_environment(engine, {}).items()} == {k: env[k] for k in engine_environment(engine, {})}
    assert "VLLM_CACHE_ROOT" not in base_env(settings, None)
