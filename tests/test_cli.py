"""`python -m serve_app` (the `serve-app` script): every subcommand's --help, config validation
with exit codes and messages naming the key, and the generated configuration reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serve_app import cli, config_reference

ROOT = Path(__file__).resolve().parent.parent


def test_help_of_every_subcommand(capsys):
    commands = ["serve", "validate-config", "smoke", *cli.DELEGATES]
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for name in commands:
        assert name in top
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "serve_app", "validate-config", str(ROOT / "configs" / "local.yaml")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "local.yaml: ok" in r.stdout


def _write(tmp_path, mutate) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    mutate(cfg["applications"][0]["args"])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_validate_config_names_the_bad_key(tmp_path, capsys):
    bad = _write(tmp_path, lambda a: a["engine"].update(tensor_parallel_size=0))
    assert cli.main(["validate-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "args.engine.tensor_parallel_size = 0" in err and "greater than or equal to 1" in err
    unknown = _write(tmp_path, lambda a: a["media"].update(no_such_option=1))
    assert cli.main(["validate-config", str(unknown)]) == 1
    assert "args.media.no_such_option" in capsys.readouterr().err


def test_validate_config_checks_serves_own_schema(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"http_options": {"port": "eighty"},
                                 "applications": [{"import_path": "serve_app.app:build_app"}]}))
    assert cli.main(["validate-config", str(p)]) == 1
    err = capsys.readouterr().err
    assert "not a valid Serve config" in err and "port" in err
    p.write_text(yaml.safe_dump({"applications": [{"import_path": "other.module:app"}]}))
    assert cli.main(["validate-config", str(p)]) == 1
    assert "no application with import_path serve_app.app:build_app" in capsys.readouterr().err


def test_config_reference_is_current():
    """docs/config-reference.md is generated: run `python -m serve_app config-reference` after
    changing serve_app/app_config.py (or the media / download / long-context schemas)."""
    assert config_reference.DEFAULT_PATH.read_text() == config_reference.render()


def test_config_reference_covers_every_key():
    text = config_reference.render()
    from serve_app.app_config import AppConfig

    for section, field in AppConfig.model_fields.items():
        for key in field.annotation.model_fields:
            assert f"`args.{section}.{key}`" in text


def test_config_reference_check_fails_when_stale(tmp_path):
    stale = tmp_path / "ref.md"
    stale.write_text("old\n")
    assert config_reference.main(["--check", "--output", str(stale)]) == 1
    assert config_reference.main(["--output", str(stale)]) == 0
    assert config_reference.main(["--check", "--output", str(stale)]) == 0


def test_warmup_runs_the_warmup_job_itself(monkeypatch, capsys):
    """`serve-app warmup` is serve_app.engine.warmup's own entry point (one implementation)."""
    from serve_app.engine import warmup

    seen = []

    def fake_run(opts):
        seen.append(opts)
        return {"ok": True, "requests": [{"status": 200}]}

    monkeypatch.setattr(warmup, "run", fake_run)
    assert cli.main(["warmup", "c.yaml", "--no-media", "--app", "qwen-vl"]) == 0
    (opts,) = seen
    assert (opts.config, opts.app, opts.images, opts.videos) == ("c.yaml", "qwen-vl", [], [])
    assert '"ok": true' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["warmup", "--image", "1x"])
    assert "usage: serve-app warmup" in capsys.readouterr().err


def test_serve_takes_the_metrics_port_before_or_after_the_config():
    from serve_app.cli import split_metrics_port

    assert split_metrics_port(8080, []) == (8080, [])
    assert split_metrics_port(8080, ["--metrics-port", "9100", "--address", "x"]) == (9100, ["--address", "x"])
    assert split_metrics_port(8080, ["--reload", "--metrics-port=9101"]) == (9101, ["--reload"])
