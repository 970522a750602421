"""Padding converter on synthetic AWQ GEMM checkpoints with the real pathology (intermediate 384 = 3 x 128,
group 128): preflight before/after, bit-identical real weights, zero padding, MLP output unchanged,
untouched non-MLP tensors and files, a correct index, refusals."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from serve_app.awq import packing, preflight
from serve_app.awq.__main__ import main as cli
from serve_app.awq.pad import UnsupportedCheckpoint, pad_checkpoint, plan
from serve_app.awq.shapes import read_safetensors_header
from serve_app.awq.synthetic import build_checkpoint, load_tensors, mlp_forward, mlp_weights

H, I, G, LAYERS = 1024, 384, 128, 2
TPS = [2, 4, 8]


def raw_tensors(model_dir: Path) -> dict[str, tuple[str, list, bytes]]:
    """name -> (dtype, shape, raw bytes) straight from the safetensors files."""
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        header, start = read_safetensors_header(f)
        data = f.read_bytes()
        for name, info in header.items():
            if name != "__metadata__":
                b, e = info["data_offsets"]
                out[name] = (info["dtype"], info["shape"], data[start + b:start + e])
    return out


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_5_vl_nested", "qwen2"])
def padded(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    ck = build_checkpoint(root / "src", layout=request.param, hidden=H, intermediate=I, group=G, layers=LAYERS,
                          shards=3, tokenizer=request.param == "qwen2")
    (root / "src" / "README.md").write_text("model card\n")
    (root / "src" / "chat_template.jinja").write_text("{{ messages }}")
    msgs = []
    report = pad_checkpoint(ck.path, root / "dst", TPS, progress=msgs.append)
    return ck, root / "src", root / "dst", report, msgs


def test_preflight_fails_before_and_passes_after(padded):
    _ck, src, dst, report, _ = padded
    assert report.changed and report.old_size == I and report.new_size == 1024
    for tp in TPS:
        before = preflight.check(src, [tp])
        assert any(p.fatal and p.layer == "mlp.down_proj" for p in before), tp
        assert preflight.check(dst, [tp]) == []
        with pytest.raises(preflight.AwqShapeError):
            preflight.require_tp_compatible(src, tp)
        preflight.require_tp_compatible(dst, tp)
    assert cli(["check", str(src), "--tp", *map(str, TPS)]) == 1
    assert cli(["check", str(dst), "--tp", *map(str, TPS)]) == 0


def test_config_updated_only_where_intermediate_size_lives(padded):
    ck, src, dst, report, _ = padded
    a = json.loads((src / "config.json").read_text())
    b = json.loads((dst / "config.json").read_text())
    if ck.layout == "qwen2_5_vl_nested":
        assert report.config_keys == ["text_config.intermediate_size"]
        assert b["text_config"]["intermediate_size"] == 1024
        a["text_config"]["intermediate_size"] = 1024
    else:
        assert report.config_keys == ["intermediate_size"]
        a["intermediate_size"] = 1024
    if "vision_config" in a:
        assert b["vision_config"]["intermediate_size"] == a["vision_config"]["intermediate_size"] == 96
    assert a == b


def test_real_weights_bit_identical_and_padding_dequantizes_to_zero(padded):
    ck, src, dst, _r, _ = padded
    ta, tb = load_tensors(src), load_tensors(dst)
    assert set(ta) == set(tb)
    for layer in range(LAYERS):
        p = f"{ck.prefix}{layer}.mlp."
        for proj in ("gate_proj", "up_proj"):
            qw, qz, sc = (tb[p + f"{proj}.{x}"] for x in ("qweight", "qzeros", "scales"))
            assert qw.shape == (H, 1024 // 8) and qz.shape == (H // G, 1024 // 8) and sc.shape == (H // G, 1024)
            np.testing.assert_array_equal(qw[:, : I // 8], ta[p + f"{proj}.qweight"])
            np.testing.assert_array_equal(qz[:, : I // 8], ta[p + f"{proj}.qzeros"])
            np.testing.assert_array_equal(sc[:, :I].view(np.uint16), ta[p + f"{proj}.scales"].view(np.uint16))
            deq_a = packing.dequantize(ta[p + f"{proj}.qweight"], ta[p + f"{proj}.qzeros"], ta[p + f"{proj}.scales"], G)
            deq_b = packing.dequantize(qw, qz, sc, G)
            np.testing.assert_array_equal(deq_b[:, :I], deq_a)
            assert np.all(deq_b[:, I:] == 0.0)
            assert not qw[:, I // 8:].any() and not qz[:, I // 8:].any() and not sc[:, I:].any()
        qw, qz, sc = (tb[p + f"down_proj.{x}"] for x in ("qweight", "qzeros", "scales"))
        assert qw.shape == (1024, H // 8) and qz.shape == (1024 // G, H // 8) and sc.shape == (1024 // G, H)
        np.testing.assert_array_equal(qw[:I], ta[p + "down_proj.qweight"])
        np.testing.assert_array_equal(qz[: I // G], ta[p + "down_proj.qzeros"])
        np.testing.assert_array_equal(sc[: I // G].view(np.uint16), ta[p + "down_proj.scales"].view(np.uint16))
        deq_b = packing.dequantize(qw, qz, sc, G)
        np.testing.assert_array_equal(
            deq_b[:I], packing.dequantize(ta[p + "down_proj.qweight"], ta[p + "down_proj.qzeros"],
                                          ta[p + "down_proj.scales"], G))
        assert np.all(deq_b[I:] == 0.0)


def test_mlp_output_unchanged_float64(padded):
    ck, src, dst, _r, _ = padded
    ta, tb = load_tensors(src), load_tensors(dst)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, H))
    for layer in range(LAYERS):
        wa = mlp_weights(ta, f"{ck.prefix}{layer}.", G)
        wb = mlp_weights(tb, f"{ck.prefix}{layer}.", G)
        ya, yb = mlp_forward(x, wa), mlp_forward(x, wb)
        assert np.abs(ya).max() > 0.1  # the MLP does something
        np.testing.assert_allclose(yb, ya, rtol=0, atol=1e-12)
        # and the intermediate activations of the padded neurons are exactly zero
        g = x @ wb["gate_proj"]
        assert np.all(g[:, I:] == 0.0)


def test_non_mlp_tensors_and_other_files_byte_identical(padded):
    ck, src, dst, report, _ = padded
    ra, rb = raw_tensors(src), raw_tensors(dst)
    assert set(ra) == set(rb)
    mlp = [n for n in ra if ".mlp." in n and "visual" not in n]
    assert len(mlp) == LAYERS * 9
    for name in ra:
        if name not in mlp:
            assert ra[name] == rb[name], name
    if ck.layout != "qwen2":  # the vision tower's own gate/up/down are not touched
        vis = [n for n in ra if "visual" in n and ".mlp." in n]
        assert vis and all(ra[n] == rb[n] for n in vis)
    # the shard without decoder MLP tensors is copied verbatim
    first = ck.files[0]
    assert (src / first).read_bytes() == (dst / first).read_bytes()
    assert first in report.copied_files and len(report.rewritten_files) == 2
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            assert (dst / f.name).read_bytes() == f.read_bytes(), f.name
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in dst.iterdir())


def test_index_json_correct(padded):
    _ck, src, dst, _r, _ = padded
    ia = json.loads((src / "model.safetensors.index.json").read_text())
    ib = json.loads((dst / "model.safetensors.index.json").read_text())
    assert ib["weight_map"] == ia["weight_map"]
    total = 0
    for f in sorted(set(ib["weight_map"].values())):
        header, start = read_safetensors_header(dst / f)
        names = {n for n in header if n != "__metadata__"}
        assert names == {n for n, v in ib["weight_map"].items() if v == f}
        end = max(v["data_offsets"][1] for n, v in header.items() if n != "__metadata__")
        assert (dst / f).stat().st_size == start + end
        total += end
        assert header["__metadata__"] == {"format": "pt"}
    assert ib["metadata"]["total_size"] == total
    grow = LAYERS * (2 * (H * (1024 - I) // 8 * 4 + H // G * (1024 - I) // 8 * 4 + H // G * (1024 - I) * 2)
                     + (1024 - I) * H // 8 * 4 + (1024 - I) // G * H // 8 * 4 + (1024 - I) // G * H * 2)
    assert total - ia["metadata"]["total_size"] == grow


def test_safetensors_and_transformers_can_read_output(padded):
    _ck, _src, dst, _r, _ = padded
    from safetensors import safe_open

    for f in dst.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                sf.get_tensor(k)


def test_progress_reported(padded):
    *_, msgs = padded
    assert any("384 -> 1024" in m for m in msgs)
    assert any(m.startswith("[1/3]") for m in msgs) and any(m.startswith("[3/3]") for m in msgs)


def test_progress_bar_only_when_interactive_or_large():
    from serve_app.awq.pad import LARGE_CHECKPOINT_BYTES, want_progress_bar

    class Tty:
        def isatty(self):
            return True

    class Log:
        def isatty(self):
            return False

    assert want_progress_bar(1 << 20, Tty())
    assert not want_progress_bar(1 << 20, Log())
    assert want_progress_bar(LARGE_CHECKPOINT_BYTES, Log())
    assert not want_progress_bar(1 << 20, object())  # no isatty: treated as a log


def test_progress_bar_names_shards_and_tensors_and_counts_every_byte(tmp_path, capsys):
    ck = build_checkpoint(tmp_path / "src", layout="qwen2", hidden=256, intermediate=I, group=G, layers=2, shards=2)
    msgs = []
    pad_checkpoint(ck.path, tmp_path / "dst", [2], progress=msgs.append, progress_bar=True)
    err = capsys.readouterr().err
    lines = err.splitlines()
    # Not a terminal: whole lines (no carriage-return redraws); the last one is at 100%, which the
    # bar reaches only when it counted exactly the tensor bytes it announced.
    assert "\r" not in err
    assert "100%|" in lines[-1] and "[2/2] model-00002-of-00002.safetensors" in lines[-1], err
    assert "model.norm.weight" in lines[-1]  # the tensor being written
    assert any(m.startswith("[1/2]") for m in msgs)  # the per-shard lines still go to `progress`


def test_cli_pad_is_quiet_under_tests_and_can_force_the_bar(tmp_path, capsys):
    ck = build_checkpoint(tmp_path / "src", layout="qwen2", hidden=256, intermediate=I, group=G, layers=1)
    assert cli(["pad", str(ck.path), str(tmp_path / "d1"), "--tp", "2"]) == 0
    assert "%|" not in capsys.readouterr().err  # small and not a terminal: lines only
    assert cli(["pad", str(ck.path), str(tmp_path / "d2"), "--tp", "2", "--progress-bar", "on"]) == 0
    err = capsys.readouterr().err
    assert "[3/3] model-00003-of-00003.safetensors: 100%|" in err
    assert cli(["pad", str(ck.path), str(tmp_path / "d3"), "--tp", "2", "--progress-bar", "on", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


# --- variants -----------------------------------------------------------------------------------


def test_bias_unquantized_layer_and_quant_config_file(tmp_path):
    ck = build_checkpoint(tmp_path / "src", layout="qwen2_5_vl", hidden=256, intermediate=I, group=G, layers=3,
                          shards=2, mlp_bias=True, quant_config_file=True, unquantized_mlp_layers=(1,))
    report = pad_checkpoint(ck.path, tmp_path / "dst", [2], progress=None)
    assert report.new_size == 512
    ta, tb = load_tensors(ck.path), load_tensors(tmp_path / "dst")
    p = ck.prefix
    assert tb[f"{p}0.mlp.gate_proj.bias"].shape == (512,) and not tb[f"{p}0.mlp.gate_proj.bias"][I:].any()
    assert tb[f"{p}0.mlp.down_proj.bias"].shape == (256,)
    assert tb[f"{p}1.mlp.gate_proj.weight"].shape == (512, 256)
    assert tb[f"{p}1.mlp.down_proj.weight"].shape == (256, 512)
    x = np.random.default_rng(1).normal(size=(8, 256))
    for layer in range(3):
        ya = mlp_forward(x, mlp_weights(ta, f"{p}{layer}.", G))
        yb = mlp_forward(x, mlp_weights(tb, f"{p}{layer}.", G))
        np.testing.assert_allclose(yb, ya, rtol=0, atol=1e-12)
    assert preflight.check(tmp_path / "dst", [2]) == []
    assert (tmp_path / "dst" / "quant_config.json").read_bytes() == (ck.path / "quant_config.json").read_bytes()


def test_single_file_checkpoint(tmp_path):
    ck = build_checkpoint(tmp_path / "src", layout="qwen2", hidden=256, intermediate=I, group=G, layers=1, shards=1)
    # turn it into one model.safetensors without an index
    files = list(ck.path.glob("*.safetensors"))
    from safetensors.numpy import save_file

    save_file(load_tensors(ck.path), str(ck.path / "model.safetensors"), metadata={"format": "pt"})
    for f in files:
        f.unlink()
    (ck.path / "model.safetensors.index.json").unlink()
    pad_checkpoint(ck.path, tmp_path / "dst", [2], progress=None)
    assert sorted(p.name for p in (tmp_path / "dst").glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "dst" / "model.safetensors.index.json").exists()
    assert preflight.check(tmp_path / "dst", [2]) == []


def test_nothing_to_do_writes_nothing(tmp_path):
    ck = build_checkpoint(tmp_path / "src", layout="qwen2", hidden=256, intermediate=256, group=G, layers=1)
    report = pad_checkpoint(ck.path, tmp_path / "dst", [1, 2], progress=None)
    assert not report.changed and report.dst is None and not (tmp_path / "dst").exists()
    assert cli(["pad", str(ck.path), str(tmp_path / "dst"), "--tp", "2", "--quiet"]) == 0
    assert not (tmp_path / "dst").exists()


def test_target_and_cli(tmp_path, capsys):
    ck = build_checkpoint(tmp_path / "src", layout="qwen2", hidden=256, intermediate=I, group=G, layers=1)
    assert cli(["pad", str(ck.path), str(tmp_path / "dst"), "--tp", "2", "--target", "768"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dst")
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["intermediate_size"] == 768
    # destination exists -> refused unless --overwrite
    assert cli(["pad", str(ck.path), str(tmp_path / "dst"), "--tp", "2", "--quiet"]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli(["pad", str(ck.path), str(tmp_path / "dst"), "--tp", "2", "--quiet", "--overwrite"]) == 0
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["intermediate_size"] == 512
    # a target that does not satisfy the TP sizes
    assert cli(["pad", str(ck.path), str(tmp_path / "d2"), "--tp", "8", "--target", "512", "--quiet"]) == 1
    assert not (tmp_path / "d2").exists()
    # destination inside the source
    assert cli(["pad", str(ck.path), str(ck.path / "sub"), "--tp", "2", "--quiet"]) == 1
    assert not list(tmp_path.glob(".*partial*"))


# --- refusals -------------------------------------------------------------------------------------


def _edit_quant(ck_path: Path, **changes):
    cfg = json.loads((ck_path / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (ck_path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def small(tmp_path):
    return build_checkpoint(tmp_path / "src", layout="qwen2", hidden=256, intermediate=I, group=G, layers=1).path


@pytest.mark.parametrize("changes, needle", [
    ({"version": "gemv"}, "'gemv'"),
    ({"version": "GEMV_FAST"}, "'gemv_fast'"),
    ({"version": "exllama"}, "'exllama'"),
    ({"version": "marlin"}, "'marlin'"),
    ({"bits": 8}, "8 bits"),
    ({"zero_point": False}, "zero_point=False"),
    ({"group_size": -1}, "group_size -1"),
    ({"quant_method": "gptq"}, "GPTQ"),
    ({"quant_method": "compressed-tensors"}, "is not AWQ"),
])
def test_refuses_unsupported_variants(small, tmp_path, capsys, changes, needle):
    _edit_quant(small, **changes)
    with pytest.raises(UnsupportedCheckpoint) as ei:
        plan(small, [2])
    msg = str(ei.value)
    assert needle in msg and "Supported: AutoAWQ GEMM" in msg
    assert cli(["pad", str(small), str(tmp_path / "dst"), "--tp", "2"]) == 1
    assert "refused" in capsys.readouterr().err and not (tmp_path / "dst").exists()


def test_refuses_unquantized(small):
    cfg = json.loads((small / "config.json").read_text())
    del cfg["quantization_config"]
    (small / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedCheckpoint, match="not quantized"):
        plan(small, [2])


def _rename_tensors(path: Path, fn):
    from safetensors.numpy import load_file, save_file

    for f in path.glob("*.safetensors"):
        t = load_file(str(f))
        save_file(dict(fn(t)), str(f), metadata={"format": "pt"})
    idx = path / "model.safetensors.index.json"
    wm = {}
    for f in path.glob("*.safetensors"):
        header, _ = read_safetensors_header(f)
        wm |= {n: f.name for n in header if n != "__metadata__"}
    data = json.loads(idx.read_text())
    data["weight_map"] = wm
    idx.write_text(json.dumps(data))


def test_refuses_fused_gate_up(small):
    def fuse(t):
        for k, v in t.items():
            yield (k.replace("mlp.gate_proj", "mlp.gate_up_proj"), v) if "mlp.gate_proj" in k else (k, v)

    _rename_tensors(small, fuse)
    with pytest.raises(UnsupportedCheckpoint, match="fused gate_up_proj"):
        plan(small, [2])


def test_refuses_gptq_style_tensors_and_gemv_shapes(small):
    def add_gidx(t):
        yield from t.items()
        yield "model.layers.0.mlp.down_proj.g_idx", np.zeros(I, np.int32)

    _rename_tensors(small, add_gidx)
    with pytest.raises(UnsupportedCheckpoint, match="g_idx"):
        plan(small, [2])


def test_refuses_gemv_layout_shapes(small):
    def transpose_gate(t):
        for k, v in t.items():
            if k.endswith("mlp.gate_proj.qweight"):  # GEMV: [out, in/8]
                v = np.zeros((I, 256 // 8), np.int32)
            yield k, v

    _rename_tensors(small, transpose_gate)
    with pytest.raises(UnsupportedCheckpoint, match="GEMV"):
        plan(small, [2])


def test_refuses_missing_mlp_tensor(small):
    _rename_tensors(small, lambda t: ((k, v) for k, v in t.items() if not k.endswith("up_proj.scales")))
    with pytest.raises(UnsupportedCheckpoint, match="incomplete"):
        plan(small, [2])


def test_refuses_config_edited_without_padding(small):
    cfg = json.loads((small / "config.json").read_text())
    cfg["intermediate_size"] = 512
    (small / "config.json").write_text(json.dumps(cfg))
    problems = preflight.check(small, [2])
    assert [p.dimension for p in problems] == ["intermediate_size"] and "without padding" in problems[0].message
    with pytest.raises(UnsupportedCheckpoint, match="expected I32"):
        plan(small, [2])


def test_refuses_tp_that_padding_cannot_fix(small):
    with pytest.raises(UnsupportedCheckpoint, match="num_attention_heads 8 is not divisible by TP 16"):
        plan(small, [16])


def test_refuses_bin_weights(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(Path(build_checkpoint(tmp_path / "s", layout="qwen2", hidden=256, intermediate=I, layers=1).path),
                    d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    (d / "model.safetensors.index.json").unlink()
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UnsupportedCheckpoint, match="no \\*.safetensors"):
        plan(d, [2])
