"""``python -m serve_app.awq check MODEL_DIR --tp 2 4 8`` / ``python -m serve_app.awq pad SRC DST --tp 2 4 8``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import pad as pad_mod
from . import preflight
from .shapes import SUPPORTED_VARIANTS, AwqConfigError, TextShapes, load_config, load_quant_config


def _cmd_check(args: argparse.Namespace) -> int:
    model = Path(args.model_dir).expanduser()
    if not model.is_dir():
        print(f"{args.model_dir}: not a local directory (hub id?): cannot check without the files; "
              "download it and check the directory", file=sys.stderr)
        return 2
    try:
        cfg = load_config(model)
        q = load_quant_config(model, cfg)
        problems = preflight.check(model, args.tp)
    except (AwqConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.allow_slow_fallback:
        problems = [p for p in problems if p.fatal]
    tps = " ".join(map(str, sorted(set(args.tp))))
    if args.json:
        print(json.dumps({"model_dir": str(model), "tp": sorted(set(args.tp)), "ok": not problems,
                          "problems": [p.__dict__ for p in problems]}, indent=2))
    elif problems:
        print(preflight.format_report(model, problems, args.tp))
    elif q is None or not q.is_awq:
        print(f"OK: {model} is not an AWQ checkpoint ({q.method if q else 'unquantized'}): no AWQ shape "
              f"constraints to check for TP {tps}")
    else:
        s = TextShapes.from_config(cfg)
        print(f"OK: {model}: AWQ group_size {q.group_size}, intermediate_size {s.intermediate_size}: vLLM can shard "
              f"it at TP {tps} (awq and awq_marlin rules)")
    return 1 if problems else 0


def _cmd_pad(args: argparse.Namespace) -> int:
    progress = None if args.quiet else pad_mod._stderr
    bar = {"auto": None, "on": True, "off": False}[args.progress_bar]
    try:
        report = pad_mod.pad_checkpoint(args.src, args.dst, args.tp, target=args.target,
                                        overwrite=args.overwrite, progress=progress,
                                        progress_bar=False if args.quiet else bar)
    except pad_mod.UnsupportedCheckpoint as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except (FileExistsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.changed:
        print(report.dst)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m serve_app.awq",
        description="Tensor-parallel shape preflight and lossless MLP padding for AWQ checkpoints (vLLM).",
        epilog=f"pad supports: {SUPPORTED_VARIANTS}.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="can vLLM shard MODEL_DIR at these TP sizes? (exit 0 yes, 1 no, 2 cannot tell)")
    c.add_argument("model_dir")
    c.add_argument("--tp", type=int, nargs="+", required=True, metavar="N")
    c.add_argument("--allow-slow-fallback", action="store_true",
                   help="accept shapes where vLLM falls back from Marlin to the slow AWQ kernel")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=_cmd_check)
    p = sub.add_parser("pad", help="write DST: SRC with the MLP intermediate size padded for these TP sizes")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--tp", type=int, nargs="+", required=True, metavar="N")
    p.add_argument("--target", type=int, default=None,
                   help="pad to this intermediate size instead of the smallest one all --tp accept")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--progress-bar", choices=("auto", "on", "off"), default="auto",
                   help="a bytes bar on stderr, per shard and tensor (auto: on a terminal, or for checkpoints "
                        f"of {pad_mod.LARGE_CHECKPOINT_BYTES >> 30} GiB and more)")
    p.set_defaults(func=_cmd_pad)
    args = ap.parse_args(argv)
    if any(t < 1 for t in args.tp):
        ap.error("--tp values must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
