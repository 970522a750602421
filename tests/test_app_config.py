"""The app schema: one clear message naming the key and the value."""

import pytest

from serve_app.app_config import EMBEDDED_TINY_MODEL, AppConfig, ConfigError, parse_app_config


def test_defaults_are_valid_and_embedded():
    cfg = parse_app_config({})
    assert cfg.model.path == EMBEDDED_TINY_MODEL and cfg.model.name == "qwen2.5-vl-tiny"
    assert cfg.engine.tensor_parallel_size == 1 and cfg.engine.placement_strategy == "STRICT_PACK"


def test_served_name_defaults_to_directory_name():
    assert parse_app_config({"model": {"path": "/models/Qwen2.5-VL-72B-Instruct-AWQ/"}}).model.name == (
        "Qwen2.5-VL-72B-Instruct-AWQ"
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        ({"engine": {"tensor_parallel_size": 0}}, "args.engine.tensor_parallel_size = 0:"),
        ({"engine": {"tensor_parallel_size": "four"}}, "args.engine.tensor_parallel_size = 'four':"),
        ({"engine": {"placement_strategy": "TIGHT"}}, "args.engine.placement_strategy = 'TIGHT':"),
        ({"engine": {"tensorparallel": 2}}, "args.engine.tensorparallel: unknown key"),
        ({"engine": {"engine_kwargs": {"model": "x"}}}, "use model.path instead"),
        ({"engine": {"engine_kwargs": {"tensor_parallel_size": 2}}}, "use engine.tensor_parallel_size"),
        ({"media": {"max_redirects": -1}}, "args.media.max_redirects = -1:"),
        ({"modle": {}}, "args.modle: unknown key"),
    ],
)
def test_bad_values_name_key_and_value(args, expected):
    with pytest.raises(ConfigError) as err:
        parse_app_config(args)
    assert expected in str(err.value)
    assert str(err.value).startswith("Invalid app config: ")


def test_config_object_passes_through():
    cfg = AppConfig()
    assert parse_app_config(cfg) is cfg
