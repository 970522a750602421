"""One command for the operator's chores: ``python -m serve_app`` (or the ``serve-app`` script).

    serve-app serve CONFIG [--metrics-port 8080]   serve run CONFIG, with Prometheus metrics on a fixed port
    serve-app validate-config CONFIG               check a Serve config's app args against the schema
    serve-app smoke URL                            one text and one image request: answers, tokens, timings
    serve-app tiny-model OUT_DIR                   write the tiny random-weight Qwen2.5-VL
    serve-app awq check|pad ...                    AWQ tensor-parallel checks and padding (serve_app.awq)
    serve-app model fetch|verify ...               fill or verify a node's model cache (serve_app.model_store)
    serve-app batch ...                            the batch job (serve_app.batch)
    serve-app warmup CONFIG ...                    fill a node's engine caches before traffic (serve_app.engine.warmup)
    serve-app render [--check]                     render cluster/ manifests (cluster.render; repo checkout)
    serve-app config-reference [--check]           docs/config-reference.md from the schema

Each subcommand has ``--help``. The delegating ones run the existing entry points unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

DEFAULT_METRICS_PORT = 8080


def _delegate_awq(argv: list[str]) -> int:
    from serve_app.awq.__main__ import main

    return main(argv)


def _delegate_model(argv: list[str]) -> int:
    from serve_app.model_store.__main__ import main

    return main(argv)


def _delegate_batch(argv: list[str]) -> int:
    from serve_app.batch.job import main

    return main(argv)


def _delegate_warmup(argv: list[str]) -> int:
    from serve_app.engine.warmup import main

    return main(argv, prog="serve-app warmup")


def _delegate_render(argv: list[str]) -> int:
    try:
        from cluster.render import main
    except ImportError:
        print("render: the cluster/ package is in the repository checkout; run from its root", file=sys.stderr)
        return 2
    return main(argv)


def _delegate_tiny(argv: list[str]) -> int:
    from serve_app.dev.tiny_model import main

    main(argv)
    return 0


def _delegate_reference(argv: list[str]) -> int:
    from serve_app.config_reference import main

    return main(argv)


# name → (help line, entry point taking the remaining argv)
DELEGATES: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "tiny-model": ("write the tiny random-weight Qwen2.5-VL checkpoint", _delegate_tiny),
    "awq": ("AWQ tensor-parallel shape checks and MLP padding", _delegate_awq),
    "model": ("fill or verify a node's model cache", _delegate_model),
    "batch": ("run the batch job (JSONL in, JSONL out)", _delegate_batch),
    "warmup": ("start a config's engine once and fill its compile/JIT caches before traffic", _delegate_warmup),
    "render": ("render the cluster/ manifests (--check: only compare)", _delegate_render),
    "config-reference": ("write docs/config-reference.md from the schema (--check: only compare)",
                         _delegate_reference),
}


# ---------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    """``serve run CONFIG`` after starting (or joining) Ray with its metrics export port fixed, so
    Prometheus metrics (Ray's, Serve's, vLLM's and the app's) are at http://127.0.0.1:PORT/metrics."""
    import ray
    from ray.serve.scripts import run

    args.metrics_port, args.serve_args = split_metrics_port(args.metrics_port, args.serve_args)
    address = os.environ.get("RAY_ADDRESS") or None
    init_kwargs = {"namespace": "serve"}
    if address in (None, "local"):
        init_kwargs["_metrics_export_port"] = args.metrics_port
    ray.init(address=address, **init_kwargs)
    if address in (None, "local"):
        print(f"Prometheus metrics: http://127.0.0.1:{args.metrics_port}/metrics", flush=True)
    # serve run skips ray.init when Ray is already initialised in this process.
    return run.main([args.config, *args.serve_args], prog_name="serve run", standalone_mode=True)


def split_metrics_port(default: int, rest: list[str]) -> tuple[int, list[str]]:
    """``--metrics-port`` given after CONFIG lands among the `serve run` options (argparse's
    REMAINDER): take it back out, so ``serve CONFIG --metrics-port N`` works as the usage says."""
    port, out, i = default, [], 0
    while i < len(rest):
        a = rest[i]
        if a == "--metrics-port" and i + 1 < len(rest):
            port, i = int(rest[i + 1]), i + 2
            continue
        if a.startswith("--metrics-port="):
            port = int(a.split("=", 1)[1])
        else:
            out.append(a)
        i += 1
    return port, out


# ------------------------------------------------------------------------------ validate-config
def validate_config(path: str) -> list[str]:
    """Problems of a Serve config file (empty: valid): Serve's own schema, then every application of
    this app (``import_path`` serve_app.app:build_app) against the app's args schema."""
    import yaml

    from serve_app.app_config import ConfigError, parse_app_config

    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}: cannot read: {exc}"]
    problems = []
    try:
        from ray.serve.schema import ServeDeploySchema

        ServeDeploySchema.model_validate(doc)
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, its message names the key
        problems.append(f"{path}: not a valid Serve config: {exc}")
        return problems
    apps = [a for a in (doc or {}).get("applications", []) if a.get("import_path") == "serve_app.app:build_app"]
    if not apps:
        problems.append(f"{path}: no application with import_path serve_app.app:build_app")
    for app in apps:
        try:
            parse_app_config(app.get("args"))
        except ConfigError as exc:
            problems.append(f"{path}: application {app.get('name', '?')!r}: {exc}")
    return problems


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    for path in args.configs:
        problems = validate_config(path)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            bad += 1
        else:
            print(f"{path}: ok")
    return 1 if bad else 0


# ------------------------------------------------------------------------------------- smoke
def cmd_smoke(args: argparse.Namespace) -> int:
    from serve_app.smoke import run_smoke

    return run_smoke(args.url, model=args.model, api_key=args.api_key, max_tokens=args.max_tokens,
                     timeout=args.timeout)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve-app", description=__doc__.split("\n\n")[0],
                                epilog="Run `serve-app COMMAND --help` for a command's options.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("serve", help="serve a Serve config with Prometheus metrics on a fixed port",
                       description=cmd_serve.__doc__)
    s.add_argument("config", help="Serve config file, e.g. configs/local.yaml")
    s.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"Ray's metrics export port of a Ray started here (default {DEFAULT_METRICS_PORT})")
    s.add_argument("serve_args", nargs=argparse.REMAINDER, help="further `serve run` options")
    s.set_defaults(func=cmd_serve)

    v = sub.add_parser("validate-config", help="check Serve config files against the app's schema",
                       description=validate_config.__doc__)
    v.add_argument("configs", nargs="+")
    v.set_defaults(func=cmd_validate)

    m = sub.add_parser("smoke", help="send a text and an image request; print answers, token counts, timings")
    m.add_argument("url", help="base URL, e.g. http://127.0.0.1:8000 (with or without /v1)")
    m.add_argument("--model", help="model name (default: the first of GET /v1/models)")
    m.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default $OPENAI_API_KEY)")
    m.add_argument("--max-tokens", type=int, default=16)
    m.add_argument("--timeout", type=float, default=120.0)
    m.set_defaults(func=cmd_smoke)

    for name, (help_line, _) in DELEGATES.items():
        sub.add_parser(name, help=help_line, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATES:
        return int(DELEGATES[argv[0]][1](argv[1:]) or 0)
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)
