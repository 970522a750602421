"""bench/awq_gpu_check.py: its non-GPU parts here; the whole script end to end on vLLM's CPU build (e2e)."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve_app.awq import preflight
from serve_app.awq.synthetic import load_tensors, mlp_forward, mlp_weights

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "awq_gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("awq_gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_imports_without_vllm(gpu_check):
    assert callable(gpu_check.prepare) and callable(gpu_check.main)
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('m', {str(SCRIPT)!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); sys.exit('vllm' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_prepare_builds_loadable_layout_and_preflights(gpu_check, tmp_path):
    info = gpu_check.prepare(tmp_path, pad_tp=[2, 4], control=True, say=lambda *_: None)
    assert info["padded_intermediate"] == 512
    assert all(info["preflight_unpadded"][tp] for tp in (2, 4, 8))
    assert info["preflight_padded"] == {2: [], 4: []}
    assert "python -m serve_app.awq pad" in info["refusal_tp2"]
    un, pad, ctl = (Path(info[k]) for k in ("unpadded", "padded", "control"))
    cfg = json.loads((un / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                          "version": "gemm", "modules_to_not_convert": None}
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (pad / f).is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pad))
    ids = tok("Tensor parallel AWQ")["input_ids"]
    assert ids and max(ids) < cfg["vocab_size"] and tok.decode(ids) == "Tensor parallel AWQ"
    # a complete Qwen2 state dict (the names vLLM's Qwen2ForCausalLM loader expects)
    names = set(load_tensors(pad))
    for n in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
              "model.layers.1.self_attn.q_proj.qweight", "model.layers.1.self_attn.k_proj.bias",
              "model.layers.1.self_attn.o_proj.scales", "model.layers.1.mlp.down_proj.qzeros",
              "model.layers.1.input_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"):
        assert n in names
    # the negative control really changes the MLP; the padded checkpoint does not
    x = np.random.default_rng(0).normal(size=(4, 1024))
    ta, tb, tc = load_tensors(un), load_tensors(pad), load_tensors(ctl)
    ya = mlp_forward(x, mlp_weights(ta, "model.layers.0.", 128))
    np.testing.assert_allclose(mlp_forward(x, mlp_weights(tb, "model.layers.0.", 128)), ya, rtol=0, atol=1e-12)
    assert np.abs(mlp_forward(x, mlp_weights(tc, "model.layers.0.", 128)) - ya).max() > 1e-2
    assert preflight.check(ctl, [2, 4]) == []  # same shapes as padded


def test_compare_metrics(gpu_check):
    ps = gpu_check.prompts()
    ref = {"prompt_logprobs": [[None] + [{str(t): -1.0, "999": -2.0} for t in p[1:]] for p in ps],
           "next_token": [1] * len(ps), "next_logprobs": [{"1": -0.5}] * len(ps)}
    same = gpu_check.compare(ref, copy.deepcopy(ref))
    assert same["max_abs_diff_actual_token"] == 0 and same["greedy_equal"] and same["top1_agree_frac"] == 1.0
    other = copy.deepcopy(ref)
    other["prompt_logprobs"][0][5][str(ps[0][5])] = -1.5
    other["next_token"][0] = 2
    diff = gpu_check.compare(ref, other)
    assert diff["max_abs_diff_actual_token"] == pytest.approx(0.5) and not diff["greedy_equal"]


def _vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@pytest.mark.e2e
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not _vllm_available(), reason="vLLM not installed")
def test_gpu_check_script_end_to_end_on_cpu(tmp_path):
    """The whole script on vLLM's CPU build (quantization=awq -> CPUWNA16 kernel, ~6 min on 2 cores):
    original, padded and negative control at TP 1, padded and original at TP 2. The padded checkpoint
    must match the original at TP 1 (exactly, on CPU) and at TP 2 (fp16 all-reduce tolerance); the
    control must not match."""
    tp = ["--load-tp", "2"] if (os.cpu_count() or 1) >= 2 else []
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--device", "cpu", "--timeout", "500",
                        *tp], cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["ok"], res["failures"]
    padded = res["runs"]["padded"]["comparison"]
    assert padded["greedy_equal"] and padded["max_abs_diff_actual_token"] <= 0.05
    control = res["runs"]["control"]["comparison"]
    assert not control["greedy_equal"] or control["max_abs_diff_topk"] > 0.05
    if tp:
        assert res["runs"]["padded_tp2"]["comparison"]["greedy_equal"]
        # informative, not asserted: vLLM 0.32's CPU build loads the *unpadded* checkpoint at TP 2
        # without complaint and computes wrong logits (see bench/README.md, AWQ section)
        print(r.stdout[-1500:])
