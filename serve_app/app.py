"""The Serve application builder: ``import_path: serve_app.app:build_app``.

``args`` (the application's ``args:`` in a Serve config file) are validated by one schema
(:class:`serve_app.app_config.AppConfig`) before anything starts. Deployment options that follow
from the engine's parallelism (placement group bundles and strategy, the replica's own resources)
are derived here; everything else about a deployment (autoscaling, max_ongoing_requests,
max_queued_requests, CPUs of preprocessing replicas) is set in the Serve config's
``deployments:`` section, which Serve applies on top.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.app_config import AppConfig, parse_app_config
from serve_app.engine.deployment import Engine
from serve_app.api.ingress import Ingress
from serve_app.preprocess.deployment import Preprocessor
from serve_app.engine.placement import engine_placement


def build_app(args: dict[str, Any] | None = None) -> Application:
    config = parse_app_config(args)
    _check_engine_kwargs_if_possible(config)
    engine = Engine.options(
        **engine_placement(config.engine).deployment_options(),
        max_constructor_retry_count=config.engine.start_attempts,
    ).bind(config)
    preprocessor = Preprocessor.bind(config)
    return Ingress.bind(preprocessor, engine, config)


def _check_engine_kwargs_if_possible(config: AppConfig) -> None:
    """Where vLLM is installed (it usually is where the app is built), refuse unknown engine
    arguments now rather than in every replica later. Reads vLLM's source instead of importing it
    (serve_app/engine/known_args.py: the import cost 10-70 s of every deploy)."""
    from serve_app.engine.known_args import engine_arg_names

    known = engine_arg_names()
    if known is None:  # vLLM missing here, or a layout the reader does not know: the replica will check
        return
    unknown = sorted(set(config.engine.engine_kwargs) - known)
    if unknown:
        from serve_app.app_config import ConfigError

        raise ConfigError(
            "Invalid app config: args.engine.engine_kwargs: unknown vLLM engine argument(s) "
            + ", ".join(f"{k!r}" for k in unknown)
        )
