"""The comparison protocol (issue #15): several launches of each server, alternating, each after a
throwaway launch, every launch driven through the same time-based levels with byte-identical
requests; the report (campaign_report.py) pairs launches and gives each ratio a 95 % interval.

    python -m bench.serve_bench.harness --phase campaign --workdir /tmp/bench --out $OUT \\
        --plan warm:vllm-asc8,warm:app,vllm-asc1,app,vllm-asc8,app,vllm-asc4,app \\
        --levels text@1,text@64,image@32,multiturn@16,image:poisson@1/2/3 --level-s 60 --ramp-s 10

Server variants (``--plan``; ``warm:`` = throwaway launch: ready, one request per workload, stop):

* ``app``: this application (``python -m serve_app serve``), production's environment;
* ``vllm-ascN``: ``vllm serve --api-server-count N``; N > 1 also ``--mm-processor-cache-type shm``
  (one processor cache shared by the API processes instead of a mirrored copy per process);
* ``--variant NAME=FLAGS`` adds or replaces one (e.g. ``vllm-asc8-lru=--api-server-count 8``).

Levels (``--levels``): ``WORKLOAD@C`` a closed loop of C workers for ``--ramp-s`` (not recorded)
then ``--level-s`` (recorded; workers start at jittered times); ``WORKLOAD:poisson@R1/R2/...`` an
open loop per rate (requests/s), the same ramp and window. Results go to WORKDIR/campaign/NN-VARIANT.json
as each launch ends (the phase resumes after the last finished launch) and are copied to ``--out``.
The campaign fails (exit 1) when a server's engine config differs from the app's in a key that is
not declared (evidence.DECLARED_DIFFERENCES) or a declared dependency is missing.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import evidence, launch, workloads
from .loadgen import LoadConfig, TimedLevel, run_open_loop, run_timed_closed, run_timed_conversations, single_request

REPO = Path(__file__).resolve().parents[2]


def _anchor_flags(n: int) -> list[str]:
    return ["--api-server-count", str(n)] + (["--mm-processor-cache-type", "shm"] if n > 1 else [])


BUILTIN_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "app": ("app", []),
    **{f"vllm-asc{n}": ("vllm", _anchor_flags(n)) for n in (1, 2, 4, 8, 16)},
}


@dataclass(frozen=True)
class LevelSpec:
    workload: str
    kind: str  # "closed" | "poisson"
    concurrency: int = 0
    rate: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.workload}@{self.concurrency}" if self.kind == "closed" else f"{self.workload}:poisson@{self.rate:g}"


@dataclass(frozen=True)
class PlannedLaunch:
    seq: int
    variant: str
    throwaway: bool

    @property
    def name(self) -> str:
        return f"{self.seq:02d}-{'warm-' if self.throwaway else ''}{self.variant}"


def parse_levels(spec: str) -> list[LevelSpec]:
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        head, sep, tail = item.partition("@")
        if not sep:
            raise ValueError(f"level {item!r}: expected WORKLOAD@CONCURRENCY or WORKLOAD:poisson@R1/R2")
        wl, _, kind = head.partition(":")
        if wl not in workloads.WORKLOADS:
            raise ValueError(f"level {item!r}: unknown workload {wl!r}")
        if kind == "poisson":
            out += [LevelSpec(wl, "poisson", rate=float(r)) for r in tail.split("/") if r]
        elif kind in ("", "closed"):
            out.append(LevelSpec(wl, "closed", concurrency=int(tail)))
        else:
            raise ValueError(f"level {item!r}: unknown kind {kind!r}")
    return out


def parse_plan(spec: str, variants: dict[str, tuple[str, list[str]]]) -> list[PlannedLaunch]:
    out = []
    for i, item in enumerate(x.strip() for x in spec.split(",") if x.strip()):
        throwaway = item.startswith("warm:")
        name = item[5:] if throwaway else item
        if name not in variants:
            raise ValueError(f"plan: unknown server variant {name!r} (known: {', '.join(variants)})")
        out.append(PlannedLaunch(i, name, throwaway))
    return out


def parse_variants(items: list[str]) -> dict[str, tuple[str, list[str]]]:
    out = dict(BUILTIN_VARIANTS)
    for item in items:
        name, sep, flags = item.partition("=")
        if not sep or not name.startswith(("vllm", "app")):
            raise ValueError(f"--variant {item!r}: expected vllm-NAME=FLAGS or app-NAME=")
        out[name] = ("vllm" if name.startswith("vllm") else "app", shlex.split(flags))
    return out


# ----------------------------------------------------------------------------------------- bodies
@dataclass
class Payloads:
    probe: bytes
    closed: dict[str, list[bytes]]  # workload -> bodies in order (every level of a launch draws afresh)
    conversations: list[Any]  # multiturn: one list of (user, turn, body) per user
    build_s: float


def build_payloads(args, levels: list[LevelSpec], model_name: str, model_dir: Path, media_url: str | None,
                   log) -> Payloads:
    """Every body the campaign can send, built once (the same bytes for every launch): enough for the
    fastest server at the level's length (``--bodies``: per workload, per level)."""
    from .harness import _media_shape, _spec  # the load phases' own: the same shapes for both protocols

    t = time.monotonic()
    counter = workloads.TokenCounter(model_dir)
    assets = args.workdir / "assets"
    closed: dict[str, list[bytes]] = {}
    conversations: list[Any] = []
    media = _media_shape(args)
    for wl in dict.fromkeys(lv.workload for lv in levels):
        if wl == "multiturn":
            shape = workloads.ConversationShape(image_width=args.conversation_image_size[0],
                                                image_height=args.conversation_image_size[1])
            users = list(range(args.conversations))
            workloads.ensure_conversation_media(assets, users, shape)
            cache: dict[Path, str] = {}
            conversations = [workloads.conversation_bodies(u, shape, model=model_name, counter=counter, assets=assets,
                                                           max_tokens=args.max_tokens or workloads.WORKLOADS[wl].max_tokens,
                                                           uri_cache=cache) for u in users]
            continue
        spec = _spec(args, wl)
        n = args.bodies.get(wl, args.bodies.get("*", 400))
        idx = list(range(n))
        if spec.media_kind:
            workloads.ensure_media(assets, spec, idx, media)
        closed[wl] = workloads.build_bodies(spec, idx, model=model_name, counter=counter, assets=assets,
                                            media_base_url=media_url, max_tokens=args.max_tokens)
        log(f"payloads {wl}: {n} bodies, {sum(map(len, closed[wl])) / 1e6:.0f} MB")
    probe = workloads.request_body(model_name, [{"role": "user", "content": "Hello, how are you?"}], 4)
    return Payloads(probe, closed, conversations, round(time.monotonic() - t, 1))


# ----------------------------------------------------------------------------------------- levels
def _level_records(recs) -> list[list[Any]]:
    t0 = min((r.start for r in recs), default=0.0)

    def r5(v):
        return None if v is None else round(v, 5)

    icl = [(lambda g: None if not g else round(sorted(g)[int(0.99 * (len(g) - 1))], 5))(r.inter_chunk()) for r in recs]
    return [[r.index, r.body_hash, round(r.start - t0, 4), r5(r.ttft), r5(r.e2e), r.output_tokens, r.prompt_tokens,
             r.chunks, icl[i], int(r.ok), r.user, r.turn] for i, r in enumerate(recs)]


RECORD_FIELDS = ["index", "body_hash", "start_s", "ttft_s", "e2e_s", "output_tokens", "prompt_tokens", "chunks",
                 "inter_chunk_p99_s", "ok", "user", "turn"]


def slo_attainment(recs, ttft_s: float, tpot_s: float) -> dict[str, Any]:
    ok = [r for r in recs if r.ok]
    good = [r for r in ok if r.ttft is not None and r.ttft <= ttft_s and (r.tpot is None or r.tpot <= tpot_s)]
    return {"requests": len(recs), "ok": len(ok), "within_slo": len(good),
            "attainment": round(len(good) / len(recs), 4) if recs else None}


def run_levels(args, launched: launch.Launched, levels: list[LevelSpec], payloads: Payloads, log) -> list[dict]:
    out = []
    base = launched.proc.base_url
    cursor: dict[str, int] = {}
    for i, lv in enumerate(levels):
        spec = workloads.WORKLOADS[lv.workload]
        cfg = LoadConfig(base_url=base, max_tokens=args.max_tokens or spec.max_tokens,
                         request_timeout_s=args.level_s + args.ramp_s + 300)
        tl = TimedLevel(ramp_s=args.ramp_s, window_s=args.level_s, drain_s=args.drain_s, seed=1000 + i)
        cpu = evidence.ProcessCPU(launched.proc.proc.pid, launched.proc.marker)
        sampler = evidence.LevelSampler(launched.metrics_url, gpu=args.device == "gpu").start()
        cpu.start()
        if lv.workload == "multiturn":
            res, recs = run_timed_conversations(cfg, lv.workload, lv.concurrency, payloads.conversations, tl)
        else:
            # Each level starts at the workload's next unused body: no request repeats within a launch.
            bodies = payloads.closed[lv.workload]
            start = cursor.get(lv.workload, 0)
            if lv.kind == "closed":
                res, recs = run_timed_closed(cfg, lv.workload, lv.concurrency, bodies[start:], tl)
            else:
                res, recs = run_open_loop(cfg, lv.workload, lv.rate, bodies[start:], tl)
            cursor[lv.workload] = start + res.extra["ramp_requests"] + res.requests + res.extra["cut_after_window"]
        d = res.to_dict()
        d.update(key=lv.key, kind=lv.kind, rate=lv.rate or None, server_cpu=cpu.stop(), sampled=sampler.stop(),
                 slo=slo_attainment(recs, args.slo_ttft_s, args.slo_tpot_s), record_fields=RECORD_FIELDS,
                 records=_level_records(recs))
        out.append(d)
        log(f"{launched.variant} {lv.key}: {res.completed}/{res.requests} ok, {res.req_per_s:.2f} req/s, "
            f"TTFT p50 {res.ttft_ms['p50']} ms, TPOT p50 {res.tpot_ms['p50']} ms, "
            f"GPU {d['sampled'].get('gpu_util_pct', {}).get('mean')}%, server CPU {d['server_cpu']['cores_busy']} cores")
    return out


# ---------------------------------------------------------------------------------------- the run
def run(args, *, settings, log, cache_dir_for, audited_env, versions, device_desc, host_info, now) -> int:
    from .servers import StaticServer, free_port

    variants = parse_variants(args.variant)
    plan = parse_plan(args.plan, variants)
    levels = parse_levels(args.levels)
    camp = args.workdir / "campaign"
    camp.mkdir(parents=True, exist_ok=True)
    (args.out / "campaign").mkdir(parents=True, exist_ok=True)
    missing = evidence.missing_dependencies(REPO / "pyproject.toml")
    meta = {"date": now(), "revision": evidence.revision(REPO), "missing_dependencies": missing,
            "device_desc": device_desc(args.device), "versions": versions(), "host": host_info(),
            "plan": args.plan, "levels": args.levels, "level_s": args.level_s, "ramp_s": args.ramp_s,
            "slo": {"ttft_s": args.slo_ttft_s, "tpot_s": args.slo_tpot_s},
            "variants": {k: {"server": v[0], "flags": v[1]} for k, v in variants.items()
                         if k in {p.variant for p in plan}}}
    _save(camp / "meta.json", meta)
    _save(args.out / "campaign" / "meta.json", meta)
    if missing and not args.allow_missing_deps:
        log(f"declared dependencies missing: {missing} (install them, or --allow-missing-deps to record anyway)")
        return 1
    static = None
    if any(workloads.WORKLOADS[lv.workload].url for lv in levels):
        static = StaticServer(args.workdir / "assets", free_port(), args.workdir / "logs" / "static.log")
    rc = 0
    try:
        payloads = build_payloads(args, levels, settings.served_name, Path(settings.model_dir),
                                  static.base_url if static else None, log)
        meta["payload_build_s"] = payloads.build_s
        _save(camp / "meta.json", meta)
        for pl in plan:
            path = camp / f"{pl.name}.json"
            if path.exists():
                log(f"{pl.name}: done earlier, skipped")
                continue
            server, flags = variants[pl.variant]
            stamp = time.strftime("%Y%m%d-%H%M%S")
            launched = launch.start(server=server, variant=pl.variant, settings=settings, workdir=args.workdir,
                                    cache_dir=cache_dir_for(server, stamp), stamp=stamp,
                                    server_env=args.server_env_vars, app_env=args.app_env_vars,
                                    serve_mode=args.serve_mode, vllm_args=flags, device=args.device,
                                    audited_env=audited_env)
            r = launched.result
            r.update(seq=pl.seq, throwaway=pl.throwaway, date=now(), flags=flags)
            log(f"{pl.name}: launching {r['command']}")
            try:
                launched.ready_s = launched.proc.wait_ready(settings.served_name, args.ready_timeout)
                log(f"{pl.name}: ready after {launched.ready_s:.1f}s")
                launch.audit(launched)
                t = time.monotonic()
                rec = single_request(launched.proc.base_url, payloads.probe, timeout_s=120)
                if rec.ttft is not None:
                    launched.first_token_s = t - launched.proc.t0 + rec.ttft
                r["probe"] = rec.to_dict()
                if pl.throwaway:
                    # one request of each workload: every code path (decoders, kernels) ran once
                    first = [b[0] for b in payloads.closed.values()] + [c[0][2] for c in payloads.conversations[:1]]
                    r["warm_requests"] = [single_request(launched.proc.base_url, b, timeout_s=300).ok for b in first]
                else:
                    r["levels"] = run_levels(args, launched, levels, payloads, log)
            except Exception as exc:  # noqa: BLE001 - keep what was measured, record the failure
                r["error"] = f"{type(exc).__name__}: {exc}"[:4000]
                log(f"{pl.name}: error {r['error'][:1500]}")
                rc = 1
            finally:
                launch.finish(launched)
            _save(path, r)
            _save(args.out / "campaign" / f"{pl.name}.json", r)
            log(f"{pl.name}: done; cold start ready {r['coldstart'].get('ready_s')} s")
    finally:
        if static:
            static.stop()
    return rc


def _save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)


def load_launches(directory: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    meta_p = directory / "meta.json"
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
    launches = [json.loads(p.read_text()) for p in sorted(directory.glob("[0-9][0-9]-*.json"))]
    return meta, launches
