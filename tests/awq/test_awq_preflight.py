"""Shape preflight: config-only checks (the real 72B numbers), API contract, CLI exit codes."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.awq import preflight
from serve_app.awq.__main__ import main as cli
from serve_app.awq.preflight import AwqShapeError, check, padded_intermediate_size, require_tp_compatible

REPO = Path(__file__).resolve().parents[2]

# Qwen2.5-VL-72B-Instruct(-AWQ) language-model sizes
TEXT_72B = {"hidden_size": 8192, "intermediate_size": 29568, "num_attention_heads": 64, "num_key_value_heads": 8,
            "num_hidden_layers": 80, "vocab_size": 152064}
VISION_72B = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3456, "num_heads": 16, "out_hidden_size": 8192}
AWQ_QC = {"bits": 4, "group_size": 128, "modules_to_not_convert": ["visual"], "quant_method": "awq",
          "version": "gemm", "zero_point": True}


def write_config(d: Path, *, nested: bool = False, text=None, qc=AWQ_QC, qc_file=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    text = dict(TEXT_72B if text is None else text)
    if nested:
        cfg = {"model_type": "qwen2_5_vl", "text_config": text, "vision_config": VISION_72B}
    else:
        cfg = {"model_type": "qwen2_5_vl", **text, "vision_config": VISION_72B}
    if qc is not None:
        cfg["quantization_config"] = qc
    (d / "config.json").write_text(json.dumps(cfg))
    if qc_file is not None:
        (d / "quant_config.json").write_text(json.dumps(qc_file))
    return d


@pytest.mark.parametrize("nested", [False, True])
def test_72b_awq_refused_at_tp_2_4_8_and_fine_at_1(tmp_path, nested):
    d = write_config(tmp_path / "m", nested=nested)
    assert check(d, [1]) == []
    problems = check(d, [2, 4, 8])
    fatal = {(p.tp, p.layer, p.dimension) for p in problems if p.fatal}
    assert fatal == {(tp, "mlp.down_proj", "input_size_per_partition") for tp in (2, 4, 8)}
    by_tp = {p.tp: p for p in problems if p.fatal}
    assert by_tp[2].per_partition == 14784 and by_tp[4].per_partition == 7392 and by_tp[8].per_partition == 3696
    assert all(p.fixable_by_padding for p in problems)
    assert "29568 / 8 = 3696" in by_tp[8].message and "group_size 128" in by_tp[8].message
    # TP 8 also breaks Marlin's N tile for gate_up (2 x 3696 = 7392, 7392 % 64 = 32): non-fatal fallback
    soft = [p for p in problems if not p.fatal]
    assert [(p.tp, p.layer, p.per_partition) for p in soft] == [(8, "mlp.gate_up_proj", 7392)]


def test_padded_72b_passes(tmp_path):
    assert padded_intermediate_size(29568, 128, [2, 4, 8], 8192) == 29696
    for tps in ([2], [4], [8], [2, 4]):
        assert padded_intermediate_size(29568, 128, tps, 8192) == 29696
    d = write_config(tmp_path / "m", text={**TEXT_72B, "intermediate_size": 29696})
    assert check(d, [1, 2, 4, 8]) == []
    require_tp_compatible(d, 8)


def test_padded_size_is_smallest_and_valid():
    assert padded_intermediate_size(384, 128, [2, 4]) == 512
    assert padded_intermediate_size(384, 128, [2, 4, 8]) == 1024
    assert padded_intermediate_size(512, 128, [2, 4]) == 512
    assert padded_intermediate_size(18944, 128, [2, 4]) == 18944  # Qwen2.5-VL-7B: already fine at 2/4
    # group 64: Marlin's K % 128 decides
    assert padded_intermediate_size(64 * 3, 64, [1]) == 256


def test_require_message_names_dimension_tp_and_fix_command(tmp_path):
    d = write_config(tmp_path / "qwen-72b-awq")
    t0 = time.monotonic()
    with pytest.raises(AwqShapeError) as ei:
        require_tp_compatible(d, 4)
    assert time.monotonic() - t0 < 1.0
    err = ei.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert "TP 4" in msg and "mlp.down_proj" in msg and "input_size_per_partition" in msg
    assert "29568 / 4 = 7392" in msg and "29568 -> 29696" in msg
    assert err.fix_command == f"python -m serve_app.awq pad {d} {d}-i29696 --tp 4"
    assert err.fix_command in msg
    assert err.problems and all(p.tp == 4 for p in err.problems)


def test_slow_fallback_only_is_opt_in(tmp_path):
    # group 64: 29568 / 2 = 14784 is a multiple of 64 (AWQ fine) but not of 128 (Marlin min_thread_k):
    # vLLM loads it, on the slow AWQ kernel instead of Marlin.
    d = write_config(tmp_path / "m", qc={**AWQ_QC, "group_size": 64})
    problems = check(d, [2])
    assert [(p.layer, p.fatal) for p in problems] == [("mlp.down_proj", False)]
    assert "min_thread_k 128" in problems[0].message
    with pytest.raises(AwqShapeError):
        require_tp_compatible(d, 2)
    require_tp_compatible(d, 2, allow_slow_fallback=True)
    assert cli(["check", str(d), "--tp", "2"]) == 1
    assert cli(["check", str(d), "--tp", "2", "--allow-slow-fallback"]) == 0


def test_heads_not_divisible_is_unfixable(tmp_path):
    text = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
            "num_hidden_layers": 28}  # Qwen2.5-VL-7B
    d = write_config(tmp_path / "m", text=text)
    problems = check(d, [8])
    assert any(p.dimension == "heads" and not p.fixable_by_padding for p in problems)
    with pytest.raises(AwqShapeError) as ei:
        require_tp_compatible(d, 8)
    assert "Not fixable by padding" in str(ei.value)
    assert check(d, [2, 4]) == []


def test_non_awq_and_hub_ids_pass(tmp_path):
    assert check("Qwen/Qwen2.5-VL-72B-Instruct-AWQ", [2, 4, 8]) == []
    require_tp_compatible("Qwen/Qwen2.5-VL-72B-Instruct-AWQ", 8)
    plain = write_config(tmp_path / "bf16", qc=None)
    assert check(plain, [2, 4, 8]) == []
    gptq = write_config(tmp_path / "gptq", qc={"quant_method": "gptq", "bits": 4, "group_size": 128})
    assert check(gptq, [8]) == []
    fp8 = write_config(tmp_path / "fp8", qc={"quant_method": "fp8"})
    require_tp_compatible(fp8, 8)


def test_autoawq_quant_config_file(tmp_path):
    d = write_config(tmp_path / "m", qc=None, qc_file={"zero_point": True, "q_group_size": 128, "w_bit": 4,
                                                        "version": "GEMM"})
    assert {p.tp for p in check(d, [2, 4, 8]) if p.fatal} == {2, 4, 8}


def test_local_dir_without_config_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        check(tmp_path, [2])


def test_cli_exit_codes(tmp_path, capsys):
    bad = write_config(tmp_path / "bad")
    good = write_config(tmp_path / "good", text={**TEXT_72B, "intermediate_size": 29696})
    assert cli(["check", str(bad), "--tp", "2", "4", "8"]) == 1
    out = capsys.readouterr().out
    assert "TP 2" in out and "TP 8" in out and f"python -m serve_app.awq pad {bad} {bad}-i29696 --tp 2 4 8" in out
    assert cli(["check", str(good), "--tp", "2", "4", "8"]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli(["check", str(bad), "--tp", "1"]) == 0
    assert cli(["check", str(tmp_path / "missing"), "--tp", "2"]) == 2
    capsys.readouterr()
    assert cli(["check", str(bad), "--tp", "8", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["problems"][0]["tp"] == 8


def test_cli_as_module(tmp_path):
    bad = write_config(tmp_path / "bad")
    r = subprocess.run([sys.executable, "-m", "serve_app.awq", "check", str(bad), "--tp", "4"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "mlp.down_proj" in r.stdout
    r = subprocess.run([sys.executable, "-m", "serve_app.awq", "check", str(bad), "--tp", "1"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_library_imports_no_vllm_torch_or_ray():
    code = ("import sys, serve_app.awq, serve_app.awq.pad, serve_app.awq.preflight, serve_app.awq.__main__; "
            "bad = [m for m in ('vllm', 'ray', 'torch') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_problem_str_is_message(tmp_path):
    d = write_config(tmp_path / "m")
    p = check(d, [2])[0]
    assert str(p) == p.message
    assert preflight.fix_command(d, [8, 2], 29696).endswith("--tp 2 8")


def test_projections_kept_in_fp16_are_not_constrained(tmp_path):
    from serve_app.awq.synthetic import build_checkpoint

    # every decoder MLP unquantized (modules_to_not_convert): nothing AWQ-specific to check there
    all_fp16 = build_checkpoint(tmp_path / "a", layout="qwen2", hidden=1024, intermediate=384, layers=1,
                                unquantized_mlp_layers=(0,)).path
    assert check(all_fp16, [2, 4, 8]) == []
    # one of two layers quantized: the constraint applies
    mixed = build_checkpoint(tmp_path / "b", layout="qwen2", hidden=1024, intermediate=384, layers=2,
                             unquantized_mlp_layers=(0,)).path
    assert {p.tp for p in check(mixed, [2, 4, 8]) if p.fatal} == {2, 4, 8}
