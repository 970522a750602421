"""Multi-GPU settings the app never leaves to vLLM: allreduce fusion/backend, multicast variables."""

import pytest

from serve_app.app_config import ConfigError, parse_app_config
from serve_app.engine.parallel_env import (FLASHINFER_BACKEND_VAR, RAY_COPY_VAR, ParallelConfigError,
                                           engine_environment)
from serve_app.engine_args import build_engine_kwargs
from serve_app.placement import engine_placement

OFF_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _cfg(**engine):
    return parse_app_config({"model": {"path": "/m"}, "engine": engine})


def _kwargs(cfg):
    return build_engine_kwargs(cfg, "/m", engine_placement(cfg.engine))


def test_tp_gpu_default_turns_the_fusion_off_and_pins_a_non_multicast_backend():
    cfg = _cfg(tensor_parallel_size=2)
    assert cfg.engine.allreduce_fusion == "off"
    assert _kwargs(cfg)["compilation_config"] == {"pass_config": {"fuse_allreduce_rms": False}}
    assert engine_environment(cfg.engine, {})[FLASHINFER_BACKEND_VAR] == "trtllm"


def test_trtllm_turns_the_fusion_on_with_that_backend():
    cfg = _cfg(tensor_parallel_size=4, allreduce_fusion="trtllm")
    assert _kwargs(cfg)["compilation_config"]["pass_config"] == {"fuse_allreduce_rms": True}
    assert engine_environment(cfg.engine, OFF_ENV)[FLASHINFER_BACKEND_VAR] == "trtllm"


def test_users_compilation_config_is_kept_and_extended():
    cfg = _cfg(tensor_parallel_size=2, engine_kwargs={
        "compilation_config": {"cudagraph_capture_sizes": [1, 2, 4], "pass_config": {"fuse_norm_quant": False}}})
    assert _kwargs(cfg)["compilation_config"] == {
        "cudagraph_capture_sizes": [1, 2, 4], "pass_config": {"fuse_norm_quant": False, "fuse_allreduce_rms": False}}


def test_single_device_and_cpu_engines_get_nothing():
    for cfg in (_cfg(), _cfg(accelerator="CPU", tensor_parallel_size=2)):
        assert "compilation_config" not in _kwargs(cfg)
        assert FLASHINFER_BACKEND_VAR not in engine_environment(cfg.engine, {})


def test_mnnvl_is_refused_where_multicast_is_off_and_names_the_variable():
    cfg = _cfg(tensor_parallel_size=2, allreduce_fusion="mnnvl")
    with pytest.raises(ParallelConfigError, match="NCCL_NVLS_ENABLE=0"):
        engine_environment(cfg.engine, {"NCCL_NVLS_ENABLE": "0"})
    assert engine_environment(cfg.engine, {})[FLASHINFER_BACKEND_VAR] == "mnnvl"


def test_multicast_variables_are_handed_to_vllms_ray_workers():
    cfg = _cfg(tensor_parallel_size=2)
    env = engine_environment(cfg.engine, {**OFF_ENV, RAY_COPY_VAR: "MY_VAR, NVSHMEM_DISABLE_NVLS"})
    assert env[RAY_COPY_VAR].split(",") == ["MY_VAR", "NVSHMEM_DISABLE_NVLS", "NCCL_NVLS_ENABLE",
                                            "TORCH_SYMM_MEM_DISABLE_MULTICAST"]
    assert RAY_COPY_VAR not in engine_environment(cfg.engine, {})


def test_the_fusion_cannot_be_set_behind_the_apps_back():
    with pytest.raises(ConfigError, match="use engine.allreduce_fusion"):
        _cfg(tensor_parallel_size=2, engine_kwargs={"compilation_config": {"pass_config": {"fuse_allreduce_rms": True}}})
    with pytest.raises(ConfigError, match="allreduce_fusion"):
        _cfg(allreduce_fusion="auto")


def test_a_compilation_level_string_cannot_take_the_apps_pass_config():
    cfg = _cfg(tensor_parallel_size=2, engine_kwargs={"compilation_config": 3})
    with pytest.raises(ParallelConfigError, match="must be a mapping"):
        _kwargs(cfg)
