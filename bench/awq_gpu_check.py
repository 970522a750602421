#!/usr/bin/env python
"""GPU proof for issue #4: a padded AWQ checkpoint gives the same logits as the original in vLLM.

One command (about 2 minutes on one H100; vLLM 0.26 - 0.32):

    python bench/awq_gpu_check.py --out /tmp/awq-gpu-check

1. builds a small but complete AWQ GEMM ``Qwen2ForCausalLM`` (hidden 1024, intermediate 384 = 3 x 128,
   group 128, 2 layers, random weights, a byte-level BPE tokenizer trained on the spot; no downloads);
2. runs the preflight on it for TP 2/4/8 (expected: refused, with the fix command);
3. pads it with the converter (``--pad-tp 2 4`` -> intermediate 512) and re-runs the preflight (expected: OK);
4. loads the original, the padded and a negative control (the padded checkpoint with real-looking
   weights written into the padded neurons) with vLLM (``quantization=awq_marlin``, TP 1,
   ``enforce_eager``), each in its own subprocess, and compares prompt logprobs (top-20 per position +
   the actual token) and the greedy next token;
5. prints a table, writes ``OUT/results.json`` and exits 0 only when padded == original within
   ``--atol`` (fp16) *and* the control differs (the comparison has teeth).

``--load-tp N`` (N GPUs) additionally loads the padded checkpoint at TP N (must match the TP 1
original) and the unpadded one at TP N (informative: vLLM refuses it on GPU; vLLM 0.32's CPU build
loads it and silently computes wrong logits).
``--device cpu`` runs the same on vLLM's CPU build (``quantization=awq``; that is what the test suite's
e2e test does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from serve_app.awq import preflight  # noqa: E402
from serve_app.awq.pad import pad_checkpoint  # noqa: E402
from serve_app.awq.synthetic import build_checkpoint, corrupt_padding  # noqa: E402

PROMPTS = 4
PROMPT_LEN = 48
TOPK = 20


# --- checkpoint preparation (no GPU, no vLLM; tested in tests/awq/test_awq_gpu_check.py) ------------------


def prepare(out: Path, *, pad_tp: list[int], control: bool, hidden: int = 1024, intermediate: int = 384,
            group: int = 128, say=print) -> dict[str, Any]:
    """Build the original, padded and control checkpoints under ``out`` and run the preflights."""
    if out.exists():
        for name in ("unpadded", "padded", "control"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    ck = build_checkpoint(out / "unpadded", layout="qwen2", hidden=hidden, intermediate=intermediate,
                          group=group, layers=2, heads=8, kv_heads=2, vocab=512, shards=3, tokenizer=True)
    info: dict[str, Any] = {"unpadded": str(ck.path), "intermediate": intermediate, "group": group,
                            "preflight_unpadded": {}, "preflight_padded": {}}
    say(f"built {ck.path} (Qwen2ForCausalLM AWQ GEMM, hidden {hidden}, intermediate {intermediate}, group {group})")
    for tp in (2, 4, 8):
        problems = sorted(preflight.check(ck.path, [tp]), key=lambda p: not p.fatal)
        info["preflight_unpadded"][tp] = [p.message for p in problems]
    try:
        preflight.require_tp_compatible(ck.path, 2)
        info["refusal_tp2"] = None
    except preflight.AwqShapeError as exc:
        info["refusal_tp2"] = str(exc)
    report = pad_checkpoint(ck.path, out / "padded", pad_tp, progress=None)
    info["padded"] = str(out / "padded")
    info["padded_intermediate"] = report.new_size
    for tp in pad_tp:
        info["preflight_padded"][tp] = [p.message for p in preflight.check(out / "padded", [tp])]
    if control:
        shutil.copytree(out / "padded", out / "control")
        corrupt_padding(out / "control", intermediate, group)
        info["control"] = str(out / "control")
    say(f"padded -> {out / 'padded'} (intermediate {report.new_size}, TP {' '.join(map(str, pad_tp))})")
    return info


def prompts(seed: int = 0, vocab: int = 300) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=PROMPT_LEN).tolist() for _ in range(PROMPTS)]


# --- vLLM worker (subprocess) -----------------------------------------------------------------


def _logprob(v: Any) -> float:
    return float(getattr(v, "logprob", v))


def worker(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    import vllm
    from vllm import LLM, SamplingParams

    quant = None if args.quantization in ("none", "auto") else args.quantization
    kwargs = dict(model=args.model, tensor_parallel_size=args.tp, enforce_eager=True, dtype=args.dtype,
                  max_model_len=256, seed=0, max_num_seqs=PROMPTS)
    if args.device == "cuda":
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    result: dict[str, Any] = {"vllm": vllm.__version__, "requested_quantization": quant, "tp": args.tp}
    try:
        llm = LLM(quantization=quant, **kwargs)
    except Exception as exc:  # some versions refuse a user quantization that differs from the config's
        if quant is None or "does not match" not in str(exc):
            raise
        result["note"] = f"quantization={quant!r} refused ({str(exc).splitlines()[0][:160]}); retried with auto"
        llm = LLM(quantization=None, **kwargs)
    for path in ("llm_engine.model_config.quantization", "llm_engine.vllm_config.model_config.quantization"):
        obj: Any = llm
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            result["resolved_quantization"] = str(obj)
            break
        except AttributeError:
            continue
    t_load = time.monotonic() - t0
    sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=TOPK, prompt_logprobs=TOPK, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts()], sp)
    result["prompt_logprobs"] = [
        [None if d is None else {str(tok): _logprob(v) for tok, v in d.items()} for d in o.prompt_logprobs]
        for o in outs
    ]
    result["next_token"] = [list(o.outputs[0].token_ids)[0] for o in outs]
    result["next_logprobs"] = [
        {str(tok): _logprob(v) for tok, v in (o.outputs[0].logprobs or [{}])[0].items()} for o in outs
    ]
    result["load_s"] = round(t_load, 1)
    result["total_s"] = round(time.monotonic() - t0, 1)
    Path(args.result).write_text(json.dumps(result))
    return 0


def run_worker(model: str, name: str, out: Path, *, device: str, quantization: str, dtype: str, tp: int,
               gpu_memory_utilization: float, timeout: int) -> dict[str, Any]:
    result = out / f"{name}.json"
    log = out / f"{name}.log"
    result.unlink(missing_ok=True)
    env = dict(os.environ)
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if tp > 1:  # vLLM's CPU workers bind one NUMA node each unless told otherwise
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_bind(tp))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "--model", model, "--result", str(result),
           "--device", device, "--quantization", quantization, "--dtype", dtype, "--tp", str(tp),
           "--gpu-memory-utilization", str(gpu_memory_utilization)]
    t0 = time.monotonic()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    text = log.read_text(errors="replace")
    kernels = sorted({ln.split("]", 1)[-1].strip()[:120] for ln in text.splitlines()
                      if ("Using" in ln and ("Linear" in ln or "kernel" in ln.lower()))
                      or "Falling back" in ln or "not supported by" in ln})
    if rc != 0 or not result.is_file():
        err = [ln.strip() for ln in text.splitlines() if "Error" in ln or "error" in ln]
        shape = [ln for ln in err if any(k in ln for k in SHAPE_ERRORS)]
        return {"ok": False, "rc": rc, "error": ((shape or err)[-1] if err else text[-400:])[:400],
                "shape_error": bool(shape), "log": str(log), "kernels": kernels,
                "seconds": round(time.monotonic() - t0, 1)}
    data = json.loads(result.read_text())
    data.update(ok=True, log=str(log), kernels=kernels, seconds=round(time.monotonic() - t0, 1))
    return data


# --- comparison -----------------------------------------------------------------------------------


def compare(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Logprob differences between two worker results over the same prompts."""
    actual, common, top1, positions, pairs = 0.0, 0.0, 0, 0, 0
    for p_ids, a_seq, b_seq in zip(prompts(), ref["prompt_logprobs"], other["prompt_logprobs"]):
        for pos, (a, b) in enumerate(zip(a_seq, b_seq)):
            if a is None or b is None:
                continue
            positions += 1
            tok = str(p_ids[pos])
            if tok in a and tok in b:
                actual = max(actual, abs(a[tok] - b[tok]))
            shared = set(a) & set(b)
            pairs += len(shared)
            for t in shared:
                common = max(common, abs(a[t] - b[t]))
            top1 += max(a, key=a.get) == max(b, key=b.get)
    for a, b in zip(ref["next_logprobs"], other["next_logprobs"]):
        for t in set(a) & set(b):
            common = max(common, abs(a[t] - b[t]))
    return {
        "max_abs_diff_actual_token": actual,
        "max_abs_diff_topk": common,
        "topk_pairs": pairs,
        "top1_agree": f"{top1}/{positions}",
        "top1_agree_frac": top1 / positions if positions else 0.0,
        "greedy_equal": ref["next_token"] == other["next_token"],
    }


def _same(c: dict[str, Any], atol: float) -> bool:
    return (c["max_abs_diff_actual_token"] <= atol and c["max_abs_diff_topk"] <= atol and c["greedy_equal"]
            and c["top1_agree_frac"] >= 0.95)


SHAPE_ERRORS = ("not aligned", "divisible", "group_size", "min_thread", "size_per_partition")


def _cpu_bind(tp: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for TP ranks on one NUMA node: the allowed cores split in ``tp`` groups."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    per = max(1, len(cores) // tp)
    groups = [cores[i * per:(i + 1) * per] or cores[-1:] for i in range(tp)]
    return "|".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="work directory (checkpoints, logs, results.json)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--quantization", default=None,
                    help="vLLM quantization (default: awq_marlin on cuda, awq on cpu; 'auto' = from the config)")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--pad-tp", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--load-tp", type=int, default=0, help="also load at this TP (needs that many GPUs)")
    ap.add_argument("--atol", type=float, default=0.05, help="max |logprob diff| accepted (fp16)")
    ap.add_argument("--no-control", action="store_true", help="skip the negative control (saves one load)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--timeout", type=int, default=420, help="seconds per vLLM load")
    # worker mode (internal)
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--tp", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quantization is None:
        args.quantization = "awq_marlin" if args.device == "cuda" else "awq"
    if args._worker:
        return worker(args)
    if args.out is None:
        ap.error("--out DIR is required")

    t0 = time.monotonic()
    out: Path = args.out.resolve()
    info = prepare(out, pad_tp=args.pad_tp, control=not args.no_control)
    print("\npreflight (unpadded, intermediate 384):")
    for tp, msgs in info["preflight_unpadded"].items():
        print(f"  TP {tp}: " + ("OK" if not msgs else f"REFUSED ({len(msgs)} problem(s)): {msgs[0][:150]}"))
    print("  require_tp_compatible(unpadded, 2) raised AwqShapeError:\n    "
          + (info["refusal_tp2"] or "NOTHING (unexpected)").replace("\n", "\n    "))
    print(f"preflight (padded, intermediate {info['padded_intermediate']}):")
    for tp, msgs in info["preflight_padded"].items():
        print(f"  TP {tp}: " + ("OK" if not msgs else f"REFUSED: {msgs[0][:150]}"))

    common = dict(device=args.device, quantization=args.quantization, dtype=args.dtype,
                  gpu_memory_utilization=args.gpu_memory_utilization, timeout=args.timeout)
    runs: dict[str, dict[str, Any]] = {}
    plan = [("unpadded", info["unpadded"], 1), ("padded", info["padded"], 1)]
    if not args.no_control:
        plan.append(("control", info["control"], 1))
    if args.load_tp > 1:
        plan += [(f"padded_tp{args.load_tp}", info["padded"], args.load_tp),
                 (f"unpadded_tp{args.load_tp}", info["unpadded"], args.load_tp)]
    for name, model, tp in plan:
        print(f"\nloading {name} (TP {tp}, quantization={args.quantization}, {args.device}) ...", flush=True)
        runs[name] = run_worker(model, name, out, tp=tp, **common)
        r = runs[name]
        print(f"  {'ok' if r['ok'] else 'FAILED'} in {r['seconds']}s"
              + (f" (vLLM {r.get('vllm')}, quantization {r.get('resolved_quantization')})" if r["ok"] else
                 f": {r['error']}"))
        for k in r.get("kernels", [])[:4]:
            print(f"    {k}")

    failures: list[str] = []
    rows = []
    ref = runs["unpadded"]
    if not ref["ok"]:
        failures.append(f"unpadded checkpoint failed to load: {ref['error']}")
    else:
        for name, _model, tp in plan[1:]:
            r = runs[name]
            if name.startswith("unpadded_tp"):
                # informative only: vLLM either refuses (GPU) or, on some builds, loads it and computes
                # garbage (vLLM 0.32 CPU: no group check) -- the reason the preflight exists.
                if not r["ok"]:
                    rows.append((name, "-", "-", "-", "-",
                                 "refused by vLLM (shape)" if r.get("shape_error") else "failed (other reason)"))
                    continue
                c = compare(ref, r)
                r["comparison"] = c
                rows.append((name, f"{c['max_abs_diff_actual_token']:.2e}", f"{c['max_abs_diff_topk']:.2e}",
                             c["top1_agree"], str(c["greedy_equal"]),
                             "loaded, matches" if _same(c, args.atol) else "LOADED, SILENTLY WRONG"))
                continue
            if not r["ok"]:
                failures.append(f"{name} failed to load: {r['error']}")
                rows.append((name, "-", "-", "-", "-", "LOAD FAILED"))
                continue
            c = compare(ref, r)
            r["comparison"] = c
            same = _same(c, args.atol)
            if name == "control":
                verdict = "differs (good)" if not same else "IDENTICAL: comparison has no teeth"
                if same:
                    failures.append("negative control matched the original: the comparison cannot see the MLP")
            else:
                verdict = "MATCH" if same else "MISMATCH"
                if not same:
                    failures.append(f"{name} differs from unpadded: {c}")
            rows.append((name, f"{c['max_abs_diff_actual_token']:.2e}", f"{c['max_abs_diff_topk']:.2e}",
                         c["top1_agree"], str(c["greedy_equal"]), verdict))
    if any(info["preflight_unpadded"][tp] == [] for tp in (2, 4, 8)):
        failures.append("preflight accepted the unpadded checkpoint at some TP")
    if any(info["preflight_padded"][tp] for tp in args.pad_tp):
        failures.append("preflight refused the padded checkpoint")

    print(f"\nresults vs unpadded (TP 1, {args.device}, quantization={args.quantization}, atol {args.atol}):")
    header = ("variant", "max|dlogp| token", "max|dlogp| top-k", "top-1 agree", "greedy equal", "verdict")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    summary = {"ok": not failures, "failures": failures, "info": info, "seconds": round(time.monotonic() - t0, 1),
               "runs": {k: {kk: vv for kk, vv in v.items() if kk not in ("prompt_logprobs", "next_logprobs")}
                        for k, v in runs.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\n{'PASS' if not failures else 'FAIL'} in {summary['seconds']}s; details: {out / 'results.json'}")
    for f in failures:
        print(f"  - {f}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
