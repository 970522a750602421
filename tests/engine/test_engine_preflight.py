"""The engine refuses an AWQ checkpoint that cannot shard at its TP, in seconds, before vLLM loads."""

import json
import time

import pytest

from serve_app.app_config import parse_app_config
from serve_app.awq.preflight import AwqShapeError
from serve_app.engine.runtime import EngineRuntime

# Qwen2.5-VL-72B-Instruct-AWQ as first published: intermediate 29568 = 231 groups of 128.
CONFIG_72B_AWQ = {
    "model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "hidden_size": 8192, "intermediate_size": 29568, "num_attention_heads": 64, "num_key_value_heads": 8,
    "num_hidden_layers": 80, "vocab_size": 152064,
    "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3456, "num_heads": 16,
                      "out_hidden_size": 8192},
    "quantization_config": {"bits": 4, "group_size": 128, "modules_to_not_convert": ["visual"],
                            "quant_method": "awq", "version": "gemm", "zero_point": True},
}


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_engine_refuses_unpadded_72b_awq_with_the_fix(tmp_path, tp):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG_72B_AWQ))
    cfg = parse_app_config({"model": {"path": str(tmp_path)}, "engine": {"tensor_parallel_size": tp}})
    t0 = time.monotonic()
    with pytest.raises(AwqShapeError) as err:
        EngineRuntime(cfg)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "down_proj" in msg and f"TP {tp}" in msg.replace("tp=", "TP ").replace("TP=", "TP ")
    assert "python -m serve_app.awq pad" in msg and f"--tp {tp}" in msg
