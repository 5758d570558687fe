"""The Grafana dashboard and its provisioning: structure, and every PromQL names a real metric."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.metrics import GpuMetrics, ScorerMetrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "streamscore.json"
# gauges the drift monitor exports (another process), if monitoring.monitor_metrics is not importable
MONITOR_METRICS = {"streamscore_drift_value", "streamscore_drift_status", "streamscore_shadow_agreement_rate"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metric_names() -> set[str]:
    """Every sample name a scorer exposes, found by exercising every ScorerMetrics call."""
    reg = CollectorRegistry()
    m = ScorerMetrics(registry=reg, instance="t")
    m.batch_consumed("p", 1)
    m.batch_produced("p", 1)
    m.dead_letters("p", "decode", 1)
    m.batch_closed("p", 10, 0.001, "size")
    m.model_latency("p", "m", 0.001, 10)
    m.e2e_latency("p", np.array([0.01]))
    m.stage_latency("decode", 0.001)
    m.queue_depth("model", 1)
    m.consumer_stats(json.dumps({"replyq": 0, "topics": {"t": {"partitions": {"0": {"consumer_lag": 1}}}}}))
    m.model_info("p", "m", "1", "primary")
    m.model_swap("p", True)
    m.delivery_error("p")
    text = generate_latest(reg).decode()
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    gpu = GpuMetrics(registry=CollectorRegistry())
    names |= {fam.name for fam in gpu.describe()}
    gpu.close()
    return names | monitor_metric_names() | {"up"}


def monitor_metric_names() -> set[str]:
    try:
        from monitoring.monitor_metrics import MonitorMetrics
    except ImportError:
        return MONITOR_METRICS
    reg = CollectorRegistry()
    MonitorMetrics(registry=reg)
    names = set()
    for fam in reg.collect():
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)
    return names


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels", []))


def _exprs(dash: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in _walk_panels(dash["panels"]) for t in p.get("targets", [])]
    out += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return out


def _metric_refs(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)             # label values are not metric names
    expr = re.sub(r"\{[^}]*\}", "", expr)                       # nor are label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return set(re.findall(r"\bstreamscore_[a-zA-Z0-9_]+", expr))


def _unknown(refs: set[str], known: set[str]) -> set[str]:
    return {r for r in refs if r not in known and not (r.endswith(HISTOGRAM_SUFFIXES) and r in known)}


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_structure(dash: dict[str, Any]) -> None:
    assert dash["uid"] == "streamscore" and dash["title"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    panels = list(_walk_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "table", "stat", "gauge"), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refids = [t["refId"] for t in p["targets"]]
        assert len(refids) == len(set(refids)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), (p["title"], var)
    # no two panels overlap on the grid
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        for yy in range(g["y"], g["y"] + g["h"]):
            for xx in range(g["x"], g["x"] + g["w"]):
                assert (xx, yy) not in cells, f"{p['title']} overlaps another panel"
                cells.add((xx, yy))


def test_every_dashboard_query_names_an_exported_metric(dash: dict[str, Any]) -> None:
    known = exported_metric_names()
    seen: set[str] = set()
    for expr in _exprs(dash):
        refs = _metric_refs(expr)
        assert refs, f"no streamscore metric in {expr!r}"
        assert not _unknown(refs, known), f"{expr!r} names unknown metrics {_unknown(refs, known)}"
        seen |= refs
    # the dashboard covers the headline series
    for name in ("streamscore_events_total", "streamscore_e2e_latency_seconds_bucket", "streamscore_consumer_lag",
                 "streamscore_dead_letters_total", "streamscore_drift_status", "streamscore_shadow_agreement_rate"):
        assert name in seen, name


def test_every_alert_rule_names_an_exported_metric() -> None:
    known = exported_metric_names()
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            refs = _metric_refs(rule["expr"])
            assert not _unknown(refs, known), (rule["alert"], _unknown(refs, known))


def test_metric_ref_extraction_ignores_labels() -> None:
    assert _metric_refs('sum by (streamscore_x) (rate(streamscore_a_total{le="streamscore_b"}[5m]))') == {"streamscore_a_total"}


def test_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    assert source["url"].startswith("http://prometheus:")
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "streamscore.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.startswith("./monitoring/grafana/dashboards:/var/lib/grafana/dashboards") for m in mounts)
    assert any(m.startswith("./monitoring/grafana/provisioning:/etc/grafana/provisioning") for m in mounts)
