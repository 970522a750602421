"""cluster/monitoring: the PodMonitor scrapes a port every Ray pod declares, and the Grafana
dashboard charts every series the app defines (and that tests/test_e2e_observability.py scrapes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from cluster import monitoring, render
from serve_app.observability import metrics

ROOT = Path(__file__).resolve().parent.parent


def test_committed_files_are_rendered():
    for rel, text in monitoring.rendered().items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run python -m cluster.render"


def test_podmonitor_scrapes_the_metrics_port_of_every_ray_pod():
    pm = yaml.safe_load((ROOT / monitoring.PODMONITOR).read_text())
    assert pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["kind"] == "PodMonitor"
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    (expr,) = pm["spec"]["selector"]["matchExpressions"]
    assert expr["key"] == "ray.io/node-type" and set(expr["values"]) == {"head", "worker"}
    for v in render.VARIANTS:
        doc = yaml.safe_load((ROOT / v.path).read_text())
        cluster = doc["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for g in groups:
            (container,) = [c for c in g["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports.get(endpoint["port"]) == monitoring.METRICS_PORT, (v.path, container["name"])
            assert str(g["rayStartParams"].get("metrics-export-port", monitoring.METRICS_PORT)) == str(
                monitoring.METRICS_PORT)


def test_dashboard_charts_every_app_series_and_the_vllm_gauges():
    dash = json.loads((ROOT / monitoring.DASHBOARD).read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for name, (kind, _, _) in metrics.SERIES.items():
        assert f"ray_{name}{'_bucket' if kind == 'histogram' else ''}" in exprs, name
    # Every stage by name in some panel (not only through the all-stages panel), media_resize apart from media_decode.
    named = set()
    for sel in re.findall(r'stage=~?"([^"]*)"', exprs):
        named |= set(sel.split("|"))
    assert set(metrics.STAGES) <= named, set(metrics.STAGES) - named
    assert "media_resize" in metrics.STAGES and "media_decode" in metrics.STAGES
    for gauge in ("ray_vllm_kv_cache_usage_perc", "ray_vllm_num_requests_running", "ray_vllm_num_requests_waiting"):
        assert gauge in exprs
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
