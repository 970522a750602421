"""The campaign's report (pure): per level, every server variant's mean over its launches, the best
anchor (``vllm serve`` variant) for that level, and app / best-anchor ratios with a 95 % interval.

Pairing: the k-th measured launch of the app with the k-th measured launch of the anchor variant
(the plan alternates them, so pair k ran back to back); the interval is Student's t over the
per-pair ratios (n - 1 degrees of freedom). With one pair there is no interval ("n=1").
Best anchor per level: the highest mean requests/s (closed loop, concurrency > 1), the lowest mean
TTFT p50 (concurrency 1), the highest goodput (open loop: requests/s within the SLO).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import evidence

# two-sided 95 % Student t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    below = [k for k in _T95 if k <= df]
    return _T95[max(below)] if below else _T95[1]


def mean_ci(values: list[float]) -> dict[str, Any]:
    """Mean and the half-width of its 95 % interval (None with fewer than 2 values)."""
    vals = [v for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "lo": None, "hi": None}
    m = sum(vals) / n
    if n < 2:
        return {"n": 1, "mean": m, "lo": None, "hi": None}
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
    h = t95(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": m, "lo": m - h, "hi": m + h}


METRICS = {
    "req_per_s": lambda lv: lv.get("req_per_s"),
    "out_tok_per_s": lambda lv: lv.get("out_tok_per_s"),
    "ttft_p50_ms": lambda lv: (lv.get("ttft_ms") or {}).get("p50"),
    "ttft_p99_ms": lambda lv: (lv.get("ttft_ms") or {}).get("p99"),
    "tpot_p50_ms": lambda lv: (lv.get("tpot_ms") or {}).get("p50"),
    "tpot_p99_ms": lambda lv: (lv.get("tpot_ms") or {}).get("p99"),
    "goodput": lambda lv: _goodput(lv),
    "inter_chunk_p99_ms": lambda lv: ((lv.get("extra") or {}).get("inter_chunk_ms") or {}).get("p99"),
    "server_cores": lambda lv: (lv.get("server_cpu") or {}).get("cores_busy"),
    "gpu_util": lambda lv: ((lv.get("sampled") or {}).get("gpu_util_pct") or {}).get("mean"),
    "engine_running": lambda lv: (((lv.get("sampled") or {}).get("engine") or {}).get("num_requests_running") or {}).get("mean"),
    "engine_waiting": lambda lv: (((lv.get("sampled") or {}).get("engine") or {}).get("num_requests_waiting") or {}).get("mean"),
    "prompt_tokens": lambda lv: lv.get("prompt_tokens_mean"),
}
HIGHER_IS_BETTER = {"req_per_s", "out_tok_per_s", "goodput"}


def _goodput(lv: dict[str, Any]) -> float | None:
    """Requests per second that met the SLO (TTFT and TPOT), over the measurement window."""
    window = (lv.get("extra") or {}).get("window_s")
    good = (lv.get("slo") or {}).get("within_slo")
    return None if not window or good is None else good / window


def measured(launches: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """variant -> its measured (not throwaway, no error) launches in plan order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(launches, key=lambda r: r.get("seq", 0)):
        if r.get("throwaway") or r.get("error") or not r.get("levels"):
            continue
        out.setdefault(r["variant"], []).append(r)
    return out


def level_keys(launches: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in launches:
        for lv in r.get("levels") or []:
            if lv["key"] not in keys:
                keys.append(lv["key"])
    return keys


def _value(run: dict[str, Any], key: str, metric: str) -> float | None:
    for lv in run.get("levels") or []:
        if lv["key"] == key:
            return METRICS[metric](lv)
    return None


def _selector(key: str) -> tuple[str, bool]:
    if ":poisson@" in key:
        return "goodput", True
    if key.endswith("@1"):
        return "ttft_p50_ms", False
    return "req_per_s", True


def best_anchor(by_variant: dict[str, list[dict[str, Any]]], key: str) -> str | None:
    metric, higher = _selector(key)
    scored = []
    for variant, runs in by_variant.items():
        if variant.startswith("vllm"):
            m = mean_ci([_value(r, key, metric) for r in runs])["mean"]
            if m is not None:
                scored.append((m, variant))
    if not scored:
        return None
    return (max if higher else min)(scored)[1]


def ratio_ci(app_runs: list[dict[str, Any]], anchor_runs: list[dict[str, Any]], key: str, metric: str) -> dict[str, Any]:
    ratios = []
    for a, b in zip(app_runs, anchor_runs):
        va, vb = _value(a, key, metric), _value(b, key, metric)
        if va is not None and vb:
            ratios.append(va / vb)
    return mean_ci(ratios)


def diff_ci(app_runs, anchor_runs, key: str, metric: str) -> dict[str, Any]:
    diffs = []
    for a, b in zip(app_runs, anchor_runs):
        va, vb = _value(a, key, metric), _value(b, key, metric)
        if va is not None and vb is not None:
            diffs.append(va - vb)
    return mean_ci(diffs)


def _f(v: float | None, nd: int = 2) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _ci(c: dict[str, Any], nd: int = 3, suffix: str = "×") -> str:
    if c["mean"] is None:
        return "—"
    if c["lo"] is None:
        return f"{c['mean']:.{nd}f}{suffix} (n=1)"
    return f"**{c['mean']:.{nd}f}{suffix}** [{c['lo']:.{nd}f}, {c['hi']:.{nd}f}] (n={c['n']})"


def config_check(launches: list[dict[str, Any]]) -> dict[str, Any]:
    """Every anchor launch's engine config against the app's: the run fails on an undeclared difference."""
    app_cfg = next((r["engine_configs"][0] for r in launches if r.get("server") == "app" and r.get("engine_configs")),
                   None)
    out: dict[str, Any] = {"app_config_found": app_cfg is not None, "by_variant": {}}
    for r in launches:
        if r.get("server") != "vllm" or not r.get("engine_configs") or app_cfg is None:
            continue
        d = evidence.diff_configs(r["engine_configs"][0], app_cfg)
        out["by_variant"].setdefault(r["variant"], d)
    out["ok"] = app_cfg is not None and all(not d["undeclared"] for d in out["by_variant"].values())
    return out


def render(meta: dict[str, Any], launches: list[dict[str, Any]]) -> str:
    by = measured(launches)
    keys = level_keys(launches)
    app_runs = by.get("app", [])
    out = ["# Serving benchmark campaign: app vs the best `vllm serve` variant", ""]
    rev = meta.get("revision") or {}
    out.append(f"- revision {rev.get('commit')} (dirty: {rev.get('dirty')}), {meta.get('date')}, "
               f"{meta.get('device_desc')}, versions {meta.get('versions')}")
    out.append(f"- plan `{meta.get('plan')}`; levels `{meta.get('levels')}`, {meta.get('ramp_s')} s ramp + "
               f"{meta.get('level_s')} s window each; SLO TTFT ≤ {meta.get('slo', {}).get('ttft_s')} s, "
               f"TPOT ≤ {meta.get('slo', {}).get('tpot_s')} s per request (open loop goodput)")
    for v, spec in (meta.get("variants") or {}).items():
        out.append(f"- `{v}`: {spec['server']} {' '.join(spec['flags'])}".rstrip())
    if meta.get("missing_dependencies"):
        out.append(f"- **declared dependencies missing on the machine: {meta['missing_dependencies']}**")
    out.append(f"- measured launches: " + ", ".join(f"{v} ×{len(rs)}" for v, rs in by.items()))
    failed = [f"{r.get('seq')}-{r.get('variant')}: {r['error'][:200]}" for r in launches if r.get("error")]
    if failed:
        out += ["- **failed launches**: " + "; ".join(failed)]
    out += ["", "## Ratios: app / best anchor (mean over launch pairs, 95 % interval)", "",
            "| level | best anchor | req/s | out tok/s | TTFT p50 | TTFT p50 Δ ms | TPOT p50 | goodput |",
            "|---|---|---|---|---|---|---|---|"]
    for key in keys:
        best = best_anchor(by, key)
        if best is None or not app_runs:
            out.append(f"| {key} | — | | | | | | |")
            continue
        anc = by[best]
        out.append(f"| {key} | {best} | {_ci(ratio_ci(app_runs, anc, key, 'req_per_s'))} "
                   f"| {_ci(ratio_ci(app_runs, anc, key, 'out_tok_per_s'))} "
                   f"| {_ci(ratio_ci(app_runs, anc, key, 'ttft_p50_ms'))} "
                   f"| {_ci(diff_ci(app_runs, anc, key, 'ttft_p50_ms'), 1, ' ms')} "
                   f"| {_ci(ratio_ci(app_runs, anc, key, 'tpot_p50_ms'))} "
                   f"| {_ci(ratio_ci(app_runs, anc, key, 'goodput')) if ':poisson@' in key else ''} |")
    out += ["", "Throughput ratios > 1 and latency ratios < 1 favour the app.", "",
            "## Every variant (means over its launches)", "",
            "| level | variant | n | req/s | out tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | inter-chunk p99 ms "
            "| goodput/s | server cores | GPU util % | engine running / waiting | prompt tok |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        for variant, runs in by.items():
            def m(metric, nd=2):
                return _f(mean_ci([_value(r, key, metric) for r in runs])["mean"], nd)
            if all(_value(r, key, "req_per_s") is None for r in runs):
                continue
            out.append(f"| {key} | {variant} | {len(runs)} | {m('req_per_s')} | {m('out_tok_per_s', 0)} "
                       f"| {m('ttft_p50_ms', 1)} / {m('ttft_p99_ms', 1)} | {m('tpot_p50_ms')} / {m('tpot_p99_ms')} "
                       f"| {m('inter_chunk_p99_ms', 1)} | {m('goodput') if ':poisson@' in key else ''} "
                       f"| {m('server_cores', 1)} | {m('gpu_util', 0)} | {m('engine_running', 1)} / {m('engine_waiting', 1)} "
                       f"| {m('prompt_tokens', 0)} |")
    out += ["", "## Cold start per launch (seconds after launch)", "",
            "| launch | variant | ready | first token | weights | torch.compile | graphs | init engine "
            "| engine ready (app) | caches found |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(launches, key=lambda r: r.get("seq", 0)):
        cs = r.get("coldstart") or {}
        tl = {e["event"]: e["t"] for e in cs.get("timeline") or []}
        inv = (r.get("compile_cache") or {}).get("inventory_before") or {}
        found = ", ".join(k for k, v in inv.items() if isinstance(v, dict) and v.get("files")) or "none"
        out.append(f"| {r.get('seq')}{' (throwaway)' if r.get('throwaway') else ''} | {r.get('variant')} "
                   f"| {_f(cs.get('ready_s'), 1)} | {_f(cs.get('first_token_s'), 1)} | {_f(cs.get('weights_load_s'), 1)} "
                   f"| {_f(cs.get('torch_compile_total_s'), 1)} | {_f(cs.get('cudagraph_s'), 0)} "
                   f"| {_f(cs.get('init_engine_s'), 1)} | {_f(tl.get('engine_ready (app replica)'), 1)} | {found} |")
    ready = {v: mean_ci([(r.get("coldstart") or {}).get("ready_s") for r in runs]) for v, runs in by.items()}
    out += ["", "Ready (mean over measured launches, warm caches): " +
            "; ".join(f"{v} {_ci(c, 1, ' s')}" for v, c in ready.items())]
    cc = config_check(launches)
    out += ["", "## Engine config: each anchor vs the app (vLLM's own config line)", ""]
    if not cc["app_config_found"]:
        out.append("- **the app's engine config line was not found in its logs**")
    for v, d in cc["by_variant"].items():
        und = d["undeclared"]
        out.append(f"- {v}: " + ("identical" if not und and not d["declared"] else
                                 f"undeclared differences {und}" if und else f"declared differences only {d['declared']}"))
    out.append(f"- config check: {'OK' if cc['ok'] else 'FAILED'}")
    return "\n".join(out).rstrip() + "\n"


README_BEGIN = "<!-- BEGIN GENERATED campaign report: {src} -->"
README_END = "<!-- END GENERATED campaign report -->"


def readme_block(text: str, src: str) -> str:
    """The report as bench/README.md carries it: headings two levels down, between markers that name
    the results directory it was rendered from (a test re-renders it and compares)."""
    lines = [("##" + ln) if ln.startswith("#") else ln for ln in text.rstrip().splitlines()]
    return "\n".join([README_BEGIN.format(src=src), *lines, README_END])


def readme_blocks(readme: str) -> dict[str, str]:
    """src -> the generated block (markers included) found in a README."""
    import re

    out = {}
    pat = re.compile(re.escape(README_BEGIN).replace(r"\{src\}", "(?P<src>[^ ]+)") + r".*?" + re.escape(README_END),
                     re.S)
    for m in pat.finditer(readme):
        out[m.group("src")] = m.group(0)
    return out


def refresh_readme(path: Path, check: bool = False) -> list[str]:
    """Re-render every generated block of ``path`` from its results directory; returns the stale
    ones (with ``check`` nothing is written)."""
    from . import campaign

    text = path.read_text()
    stale = []
    for src, block in readme_blocks(text).items():
        meta, launches = campaign.load_launches(path.parent.parent / src if not Path(src).is_absolute() else Path(src))
        new = readme_block(render(meta, launches), src)
        if new != block:
            stale.append(src)
            text = text.replace(block, new)
    if stale and not check:
        path.write_text(text)
    return stale


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.serve_bench.campaign_report",
                                 description="Re-render the campaign reports a README carries (bench/README.md).")
    ap.add_argument("readme", type=Path, nargs="?", default=Path(__file__).resolve().parents[1] / "README.md")
    ap.add_argument("--check", action="store_true", help="only report stale blocks (exit 1)")
    args = ap.parse_args(argv)
    stale = refresh_readme(args.readme, check=args.check)
    for s in stale:
        print(f"{'stale' if args.check else 'refreshed'}: {s}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
