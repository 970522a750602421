"""model.long_context → vLLM hf_overrides and max_model_len, checked against vLLM's own ModelConfig
(the CPU build in the venv): the window grows, YaRN is applied, mrope_section and rope_theta kept."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from serve_app.app_config import ConfigError, parse_app_config
from serve_app.engine.args import build_engine_kwargs
from serve_app.long_context import LongContextConfig, hf_overrides
from serve_app.engine.placement import engine_placement

# Qwen2.5-VL-72B-Instruct's config.json as released (transformers 4.x format), the part that matters.
CONFIG_72B = {"model_type": "qwen2_5_vl", "max_position_embeddings": 128000, "rope_theta": 1000000.0,
              "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
YARN = {"mode": "yarn", "factor": 4, "original_max_position_embeddings": 32768}


def test_yarn_overrides_keep_mrope_section_for_both_transformers_generations(tiny_model_dir):
    lc = LongContextConfig(**YARN)
    tiny = json.loads((tiny_model_dir / "config.json").read_text())
    assert hf_overrides(lc, tiny, transformers_major=5) == {"text_config": {
        "max_position_embeddings": 131072,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6],
                            "factor": 4.0, "original_max_position_embeddings": 32768}}}
    # The model card's config.json edit, for transformers 4.x / vLLM 0.26.
    legacy = {"max_position_embeddings": 131072,
              "rope_scaling": {"type": "yarn", "rope_type": "yarn", "mrope_section": [16, 24, 24], "factor": 4.0,
                               "original_max_position_embeddings": 32768}}
    assert hf_overrides(lc, CONFIG_72B, transformers_major=4) == {**legacy, "text_config": legacy}
    assert hf_overrides(lc, CONFIG_72B, transformers_major=5)["text_config"]["rope_parameters"]["mrope_section"] \
        == [16, 24, 24]


def test_max_position_embeddings_mode_changes_only_the_window(tiny_model_dir):
    lc = LongContextConfig(mode="max_position_embeddings", max_position_embeddings=65536)
    tiny = json.loads((tiny_model_dir / "config.json").read_text())
    assert hf_overrides(lc, tiny, transformers_major=5) == {"text_config": {"max_position_embeddings": 65536}}
    assert hf_overrides(lc, CONFIG_72B, transformers_major=4) == {
        "max_position_embeddings": 65536, "text_config": {"max_position_embeddings": 65536}}


@pytest.mark.parametrize("lc, needle", [
    ({"mode": "yarn", "factor": 4}, "needs factor and original_max_position_embeddings"),
    ({"mode": "max_position_embeddings"}, "needs max_position_embeddings"),
    ({"mode": "max_position_embeddings", "max_position_embeddings": 65536, "factor": 2}, "mode 'yarn' only"),
    ({"mode": "yarn", "factor": 0.5, "original_max_position_embeddings": 32768}, "greater than 1"),
    ({"mode": "ntk"}, "args.model.long_context.mode"),
])
def test_bad_long_context_fails_at_build(lc, needle):
    with pytest.raises(ConfigError) as err:
        parse_app_config({"model": {"long_context": lc}})
    assert needle in str(err.value)


def small_window_checkpoint(src: pathlib.Path, dst: pathlib.Path, window: int) -> pathlib.Path:
    """The tiny model with a short native window (cheap to exceed on a CPU)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = window
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def vllm_model_config(cfg):
    from vllm.engine.arg_utils import EngineArgs

    kwargs = build_engine_kwargs(cfg, cfg.model.path, engine_placement(cfg.engine))
    kwargs = {k: v for k, v in kwargs.items() if k not in ("enable_log_requests", "disable_log_stats")}
    return EngineArgs(**kwargs).create_model_config()


@pytest.mark.parametrize("long_context, window, rope_type", [
    (None, 2048, "default"),
    ({"mode": "yarn", "factor": 4, "original_max_position_embeddings": 2048}, 8192, "yarn"),
    ({"mode": "max_position_embeddings", "max_position_embeddings": 6144}, 6144, "default"),
])
def test_vllm_takes_the_overrides(tiny_model_dir, tmp_path, long_context, window, rope_type):
    ckpt = small_window_checkpoint(tiny_model_dir, tmp_path / "ckpt", 2048)
    cfg = parse_app_config({"model": {"path": str(ckpt), "long_context": long_context},
                            "engine": {"accelerator": "CPU"}})
    mc = vllm_model_config(cfg)
    rope = mc.hf_text_config.rope_parameters
    assert mc.max_model_len == window
    assert rope["rope_type"] == rope_type and rope["mrope_section"] == [4, 6, 6] and rope["rope_theta"] == 1e6
    if rope_type == "yarn":
        assert rope["factor"] == 4.0 and rope["original_max_position_embeddings"] == 2048


def test_max_model_len_may_be_smaller_not_larger(tiny_model_dir, tmp_path):
    ckpt = small_window_checkpoint(tiny_model_dir, tmp_path / "ckpt", 2048)
    lc = {"mode": "yarn", "factor": 4, "original_max_position_embeddings": 2048}
    cfg = parse_app_config({"model": {"path": str(ckpt), "long_context": lc},
                            "engine": {"accelerator": "CPU", "engine_kwargs": {"max_model_len": 4096}}})
    assert build_engine_kwargs(cfg, str(ckpt), engine_placement(cfg.engine))["max_model_len"] == 4096
    cfg = parse_app_config({"model": {"path": str(ckpt), "long_context": lc},
                            "engine": {"accelerator": "CPU", "engine_kwargs": {"max_model_len": 9000}}})
    with pytest.raises(ValueError, match="exceeds model.long_context's window of 8192"):
        build_engine_kwargs(cfg, str(ckpt), engine_placement(cfg.engine))
