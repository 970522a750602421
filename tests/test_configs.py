"""Every Serve config in configs/ is a valid Serve config and a valid app config."""

import pathlib

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app_config import parse_app_config
from serve_app.engine.placement import engine_placement

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.yaml"))
DEPLOYMENTS = {"Ingress", "Preprocessor", "Engine"}


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"local.yaml", "qwen2.5-vl-72b-awq-tp4.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_serve_and_app_schema(path):
    raw = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(raw)  # what `serve deploy` / `serve run` check
    for app in schema.applications:
        assert app.import_path == "serve_app.app:build_app"
        cfg = parse_app_config(app.args)
        names = {d.name for d in app.deployments}
        assert names == DEPLOYMENTS, f"{path.name}: deployments {names}"
        for d in app.deployments:
            # Autoscaling for every deployment is set in the config file.
            assert d.autoscaling_config is not None, f"{path.name}: {d.name} has no autoscaling_config"
            # Placement of engine replicas is derived from TP x PP, never hand-written here.
            assert "placement_group_bundles" not in d.model_fields_set
        placement = engine_placement(cfg.engine)
        assert len(placement.bundles) == cfg.engine.world_size


def test_production_example_is_tp4_awq_strict_pack():
    raw = yaml.safe_load((CONFIGS[0].parent / "qwen2.5-vl-72b-awq-tp4.yaml").read_text())
    cfg = parse_app_config(raw["applications"][0]["args"])
    assert cfg.engine.tensor_parallel_size == 4 and cfg.engine.accelerator == "GPU"
    assert cfg.engine.engine_kwargs["quantization"] == "awq_marlin"
    p = engine_placement(cfg.engine)
    assert p.strategy == "STRICT_PACK" and [b["GPU"] for b in p.bundles] == [1, 1, 1, 1]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_preprocessor_queue_is_bounded(path):
    """Media requests past the Preprocessor's queue are 503s with Retry-After at once; unbounded,
    slow sources would let every later media request wait behind them."""
    raw = yaml.safe_load(path.read_text())
    for app in ServeDeploySchema.model_validate(raw).applications:
        pre = next(d for d in app.deployments if d.name == "Preprocessor")
        assert "max_queued_requests" in pre.model_fields_set and pre.max_queued_requests > 0, path.name
