"""Markdown tables from the phase results (pure)."""

from __future__ import annotations

from typing import Any

from .metrics import ratio

SERVERS = ("vllm", "app")
LABEL = {"vllm": "vllm serve", "app": "app (serve run)"}
CLIENT_CPU_WARN = 0.7  # cores
LOOP_LAG_WARN_MS = 20.0


def fmt(v: float | None, nd: int = 1) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _count(n: float | None) -> str:
    if not n:
        return "?"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.3f}×"


def fmt_delta(a: float | None, b: float | None, nd: int = 1) -> str:
    return "—" if a is None or b is None else f"{a - b:+.{nd}f}"


def _levels(phase: dict[str, Any] | None) -> dict[tuple[str, int], dict[str, Any]]:
    if not phase:
        return {}
    return {(lv["workload"], lv["concurrency"]): lv for lv in phase.get("levels", [])}


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (workload, concurrency) present in either phase, with both servers' numbers."""
    by = {s: _levels(results.get(s)) for s in SERVERS}
    keys: list[tuple[str, int]] = []
    for s in SERVERS:
        for k in by[s]:
            if k not in keys:
                keys.append(k)
    rows = []
    for k in keys:
        v, a = by["vllm"].get(k), by["app"].get(k)
        row: dict[str, Any] = {"workload": k[0], "concurrency": k[1], "vllm": v, "app": a}
        if v and a:
            row["ratio"] = {
                "req_per_s": ratio(a["req_per_s"], v["req_per_s"]),
                "out_tok_per_s": ratio(a["out_tok_per_s"], v["out_tok_per_s"]),
                "ttft_p50": ratio(a["ttft_ms"]["p50"], v["ttft_ms"]["p50"]),
                "ttft_p99": ratio(a["ttft_ms"]["p99"], v["ttft_ms"]["p99"]),
                "tpot_p50": ratio(a["tpot_ms"]["p50"], v["tpot_ms"]["p50"]),
                "tpot_p99": ratio(a["tpot_ms"]["p99"], v["tpot_ms"]["p99"]),
            }
            row["ttft_p50_delta_ms"] = (None if a["ttft_ms"]["p50"] is None or v["ttft_ms"]["p50"] is None
                                        else a["ttft_ms"]["p50"] - v["ttft_ms"]["p50"])
        rows.append(row)
    return rows


def warnings_for(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        tag = f"{r['workload']} c={r['concurrency']}"
        for s in SERVERS:
            lv = r.get(s)
            if not lv:
                continue
            if lv["failed"]:
                out.append(f"{tag} {s}: {lv['failed']} failed request(s): {'; '.join(lv.get('errors', [])[:2])}")
            if lv["short"]:
                out.append(f"{tag} {s}: {lv['short']} request(s) returned fewer tokens than max_tokens")
            if lv["client_cpu"] > CLIENT_CPU_WARN:
                out.append(f"{tag} {s}: load generator used {lv['client_cpu']:.2f} cores — the client may be the limit")
            lag = lv.get("loop_lag_ms_p99")
            if lag is not None and lag > LOOP_LAG_WARN_MS:
                out.append(f"{tag} {s}: client event-loop lag p99 {lag:.0f} ms — the client may be the limit")
            if lv.get("extra", {}).get("not_started_deadline"):
                out.append(f"{tag} {s}: {lv['extra']['not_started_deadline']} request(s) not sent (time cap)")
        v, a = r.get("vllm"), r.get("app")
        if v and a and v.get("prompt_tokens_mean") and a.get("prompt_tokens_mean"):
            pv, pa = v["prompt_tokens_mean"], a["prompt_tokens_mean"]
            if abs(pa - pv) > 0.01 * pv:
                out.append(f"{tag}: prompt tokens differ (vllm {pv:.0f}, app {pa:.0f}) — not the same work")
    return out


def comparison_table(rows: list[dict[str, Any]]) -> str:
    head = ("| workload | conc | server | req/s | out tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) "
            "| prompt tok | ok / failed | client CPU |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        for s in SERVERS:
            lv = r.get(s)
            if not lv:
                lines.append(f"| {r['workload']} | {r['concurrency']} | {LABEL[s]} | _not run_ | | | | | | |")
                continue
            lines.append(
                f"| {r['workload']} | {r['concurrency']} | {LABEL[s]} | {fmt(lv['req_per_s'], 2)} "
                f"| {fmt(lv['out_tok_per_s'], 0)} | {fmt(lv['ttft_ms']['p50'])} / {fmt(lv['ttft_ms']['p99'])} "
                f"| {fmt(lv['tpot_ms']['p50'], 2)} / {fmt(lv['tpot_ms']['p99'], 2)} "
                f"| {fmt(lv['prompt_tokens_mean'], 0)} | {lv['completed']} / {lv['failed']} | {lv['client_cpu']:.2f} |")
        if "ratio" in r:
            q = r["ratio"]
            lines.append(
                f"| {r['workload']} | {r['concurrency']} | **app / vllm** | **{fmt_ratio(q['req_per_s'])}** "
                f"| **{fmt_ratio(q['out_tok_per_s'])}** "
                f"| {fmt_ratio(q['ttft_p50'])} ({fmt_delta(r['app']['ttft_ms']['p50'], r['vllm']['ttft_ms']['p50'])} ms)"
                f" / {fmt_ratio(q['ttft_p99'])} | {fmt_ratio(q['tpot_p50'])} / {fmt_ratio(q['tpot_p99'])} | | | |")
    return "\n".join(lines)


COLD_ROWS = [
    ("launch → ready (GET /v1/models 200)", "ready_s"),
    ("launch → first token", "first_token_s"),
    ("weights: Loading weights took", "weights_load_s"),
    ("weights: Model loading took (s)", "model_loading_s"),
    ("torch.compile total (LM + encoder)", "torch_compile_total_s"),
    ("  of which Dynamo bytecode transform", "dynamo_s"),
    ("  of which Inductor graph compile", "inductor_compile_s"),
    ("  compiled graphs loaded from cache", "compile_cache_load_s"),
    ("memory profiling", "memory_profiling_s"),
    ("CUDA graph capture", "cudagraph_s"),
    ("init engine (profile, KV cache, warm-up; incl. compile + graphs)", "init_engine_s"),
    ("app replica: process start → engine __init__ (Ray worker + imports)", "replica_process_age_s"),
    ("app replica: import vLLM", "replica_import_vllm_s"),
    ("app replica: AsyncLLM start (vLLM engine, all of the above)", "replica_async_llm_s"),
    ("KV cache (GiB)", "kv_cache_gib"),
    ("KV cache (tokens)", "kv_cache_tokens"),
]


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    return fmt(v, 1) if isinstance(v, float) else str(v)


def coldstart_table(results: dict[str, Any]) -> str:
    cols: list[tuple[str, dict[str, Any]]] = [(LABEL[s], (results.get(s) or {}).get("coldstart") or {})
                                              for s in SERVERS]
    for name, ph in (results.get("extra_runs") or {}).items():
        cache = (ph.get("compile_cache") or {}).get("mode", "")
        cols.append((f"{name} (compile cache: {cache})", ph.get("coldstart") or {}))
    lines = ["| seconds | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for label, key in COLD_ROWS:
        vals = [cs.get(key) for _, cs in cols]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(v) for v in vals) + " |")
    for name, cs in cols:
        tl = cs.get("timeline")
        if tl:
            lines.append("")
            lines.append(f"Timeline, {name} (seconds after launch; gap = since previous): "
                         + " → ".join(f"{x['event']} {x['t']:.1f} (+{x['gap']:.1f})" for x in tl))
    return "\n".join(lines)


def bound_table(results: dict[str, Any], rows: list[dict[str, Any]]) -> str | None:
    bw = results.get("bw")
    if not bw or not bw.get("bound_tpot_ms"):
        return None
    # Tensor parallelism splits every decoder weight (and the lm_head) over the GPUs, each reading
    # its share from its own memory at the same time: the bound divides by the TP size.
    tp = max((int((results.get(s) or {}).get("engine_kwargs", {}).get("tensor_parallel_size") or 1)
              for s in SERVERS), default=1)
    bound_ms = bw["bound_tpot_ms"] / tp
    lines = [
        f"Copy bandwidth {bw['copy_gbps_best']:.0f} GB/s (best of {bw['iters']}, median "
        f"{bw['copy_gbps_median']:.0f}) on {bw.get('device_name', bw['device'])}; bytes read per decode step "
        f"{_count(bw['decode_bytes'])}B"
        + (f", {_count(bw['decode_bytes'] / tp)}B per GPU at TP {tp}" if tp > 1 else "")
        + f" → bound TPOT {bound_ms:.2f} ms ({1000 / bound_ms:.0f} tok/s at batch 1).",
        "",
        "| server | workload | TPOT p50 at concurrency 1 (ms) | tok/s | % of bound |",
        "|---|---|---|---|---|",
    ]
    any_row = False
    for r in rows:
        if r["concurrency"] != 1:
            continue
        for s in SERVERS:
            lv = r.get(s)
            if lv and lv["tpot_ms"]["p50"]:
                t = lv["tpot_ms"]["p50"]
                any_row = True
                lines.append(f"| {LABEL[s]} | {r['workload']} | {t:.2f} | {1000 / t:.0f} "
                             f"| {100 * bound_ms / t:.0f}% |")
    return "\n".join(lines) if any_row else "\n".join(lines[:1])


def render(results: dict[str, Any]) -> str:
    rows = comparison_rows(results)
    meta = results.get("meta", {})
    out = ["# GPU serving benchmark: app (Ray Serve) vs vllm serve", ""]
    for s in SERVERS:
        ph = results.get(s)
        if ph:
            out.append(f"- {LABEL[s]}: {ph.get('date', '')}, device {ph.get('device_desc', '')}, "
                       f"versions {ph.get('versions', {})}")
    if meta.get("checkpoint"):
        ck = meta["checkpoint"]
        out.append(f"- model: {ck.get('shape')} ({_count(ck.get('params'))} parameters, "
                   f"{_count(ck.get('total_bytes'))}B of weights, vocab {ck.get('vocab_size')}, init {ck.get('init', '-')})")
    for s in SERVERS:
        ph = results.get(s)
        if ph and ph.get("engine_kwargs"):
            out.append(f"- shared engine args ({s} phase): `{ph['engine_kwargs']}`")
            break
    out += ["", "## Throughput and latency", "", comparison_table(rows) if rows else "_no load results_", ""]
    warns = warnings_for(rows)
    if warns:
        out += ["Warnings:", ""] + [f"- {w}" for w in warns] + [""]
    for tag, run in sorted((results.get("extra_runs") or {}).items()):
        # A tagged re-run of one server (e.g. a workload repeated after a fix), against the other
        # server's untagged run of the same workloads.
        server = run.get("server")
        other = next((s for s in SERVERS if s != server), None)
        if server in SERVERS and run.get("levels") and results.get(other):
            names = {lv["workload"] for lv in run["levels"]}
            other_run = dict(results[other], levels=[lv for lv in results[other].get("levels", [])
                                                     if lv["workload"] in names])
            extra_rows = comparison_rows({server: run, other: other_run})
            out += [f"### Tagged run `{tag}` ({run.get('date', '')}) against the {LABEL[other]} run above", "",
                    comparison_table(extra_rows), ""]
            out += [f"- {w}" for w in warnings_for(extra_rows)] + ([""] if warnings_for(extra_rows) else [])
    out += ["## Cold start", "", coldstart_table(results), ""]
    bt = bound_table(results, rows)
    if bt:
        out += ["## Decode speed vs the weight-bandwidth bound", "", bt, ""]
    for s in SERVERS:
        ph = results.get(s)
        if ph and ph.get("skipped"):
            out.append(f"Skipped in the {s} phase: {', '.join(ph['skipped'])}")
    return "\n".join(out).rstrip() + "\n"
