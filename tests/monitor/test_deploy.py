"""deploy/grafana and deploy/prometheus: they parse, and every metric they use is one a real
server exports (a dashboard over a renamed metric shows nothing, silently)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.monitor.conftest import in_distribution, post_images

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_NAME = re.compile(r"\bvisiondeck_[a-z0-9_]+\b")
_DURATION = re.compile(r"^\d+[smhd]$")


@pytest.fixture(scope="module")
def exported_names(serve_bundle: Path, tmp_path_factory) -> set[str]:
    """Series names in a /metrics scrape after traffic of every kind: predictions, labels,
    a refused upload, a reload."""
    from fastapi.testclient import TestClient

    from visiondeck.serve.app import create_app
    from visiondeck.serve.settings import ServeSettings

    settings = ServeSettings(bundle=str(serve_bundle), watch_interval_s=0,
                             data_dir=tmp_path_factory.mktemp("deploy"), preprocess_threads=2,
                             intra_op_threads=1)
    with TestClient(create_app(settings)) as client:
        predictions = post_images(client, in_distribution(31, seed=401))
        for p in predictions[:5]:
            client.put(f"/predictions/{p['id']}/label",
                       json={"label": p["predicted"], "token": p["label_token"]})
        client.post("/predict", content=b"not an image", headers={"content-type": "image/png"})
        asyncio.run(client.app.state.services.engine.reload())
        client.app.state.services.writer.flush()
        client.get("/monitor/summary")  # refreshes live accuracy from the labels
        text = client.get("/metrics").text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}
    # families declared but without a sample yet (a labelled series nothing has hit, such
    # as unknown predictions of a Bundle without a reject rule): their exposition names
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = ("_bucket", "_sum", "_count") if kind == "histogram" else ("",)
            names |= {name + suffix for suffix in suffixes}
    return names


def _exprs(node) -> list[str]:
    """Every PromQL expression in a dashboard or rules document."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found += _exprs(value)
    elif isinstance(node, list):
        for item in node:
            found += _exprs(item)
    return found


def _check_expr(expr: str) -> None:
    assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    assert expr.count('"') % 2 == 0, expr


def test_dashboard_is_grafana_json_over_exported_metrics(exported_names: set[str]) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "visiondeck-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 15
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for target in panel["targets"]:
            _check_expr(target["expr"])
    used = {name for expr in _exprs(dashboard) for name in _NAME.findall(expr)}
    assert used - exported_names == set()
    # the drift and accuracy series are all on the dashboard
    assert {"visiondeck_drift_alarm", "visiondeck_drift_score", "visiondeck_drift_threshold",
            "visiondeck_live_accuracy", "visiondeck_window_size",
            "visiondeck_ready"} <= used


def test_alert_rules_parse_and_use_exported_metrics(exported_names: set[str]) -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {"VisionDeckDriftAlarm", "VisionDeckLiveAccuracyLow", "VisionDeckHighErrorRate",
            "VisionDeckHighLatencyP99", "VisionDeckNotReady"} <= set(alerts)
    for name, rule in alerts.items():
        _check_expr(rule["expr"])
        assert _DURATION.match(rule["for"]), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    used = {name for expr in _exprs(rules) for name in _NAME.findall(expr)}
    assert used - exported_names == set()
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert 'job="visiondeck"' in alerts["VisionDeckDown"]["expr"]
    assert config["scrape_configs"][0]["job_name"] == "visiondeck"
