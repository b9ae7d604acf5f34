"""evaluate_run on the shared tiny run: files, their contract, and the report's content."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest


class _Collector(HTMLParser):
    """Images, links, section ids and table rows of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.sections: list[str] = []
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        for key in ("src", "href"):
            if (values.get(key) or "").startswith(("http:", "https:", "//")):
                self.external.append(values[key] or "")
        if tag in ("script", "link") and (values.get("src") or values.get("href")):
            self.external.append(tag)
        if tag == "section" and values.get("id"):
            self.sections.append(values["id"] or "")
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = True
            if self._row is not None:
                self._row.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append([c.strip() for c in self._row])
            self._row = None
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data: str) -> None:
        if self._cell and self._row:
            self._row[-1] += data


@pytest.fixture(scope="module")
def evaluated(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):
    from visiondeck.evaluate import evaluate_run

    out = tmp_path_factory.mktemp("evaluation")
    return evaluate_run(trained_run, out_dir=out, n_boot=100, gradcam_samples=2)


def test_metrics_and_calibration_files(evaluated) -> None:
    from visiondeck.export.bundle import Calibration

    out = evaluated.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["left", "middle", "right"]
    headline = metrics["headline"]
    assert all(isinstance(v, float) for v in headline.values())
    assert {"accuracy", "balanced_accuracy", "macro_f1", "mcc", "roc_auc_macro", "ece"} <= set(
        headline)
    assert sum(c["support"] for c in metrics["per_class"].values()) == metrics["n"] == 24
    counts = metrics["confusion_matrix"]["counts"]
    assert sum(map(sum, counts)) == 24
    low, high = metrics["ci95"]["accuracy"]
    assert low <= headline["accuracy"] <= high
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24
    assert sum(int(r["correct"]) for r in rows) / 24 == pytest.approx(headline["accuracy"])
    raw = json.loads((out / "calibration.json").read_text())
    assert set(raw) == {"temperature", "reject", "decision_threshold"}
    parsed = Calibration.from_dict(raw, metrics["classes"])  # what export will read
    assert parsed.temperature > 0 and parsed.reject is not None
    rates = metrics["reject"]["fire_rate"]
    assert rates["val"] <= 0.05 + 1 / metrics["n_val"]  # keeps 95 % of validation
    assert rates["noise"] > rates["test"]  # fires on noise far more than on real images


def test_report_is_self_contained_and_complete(evaluated) -> None:
    page = _Collector()
    page.feed(evaluated.report.read_text(encoding="utf-8"))
    assert not page.external
    assert page.images and all(s.startswith("data:image/png;base64,") for s in page.images)
    assert len(page.images) >= 9  # curves, 2 confusions, ROC, PR, reliability, reject, CAMs
    assert {"headline", "training", "per-class", "confusion", "curves", "calibration",
            "reject", "confused", "mistakes", "gradcam"} <= set(page.sections)
    metrics = evaluated.metrics
    table = {row[0]: row for row in page.rows if row and row[0] in metrics["classes"]}
    for name in metrics["classes"]:
        assert table[name][1] == str(metrics["per_class"][name]["support"])
        assert table[name][5] == f"{metrics['per_class'][name]['f1']:.3f}"
    assert (evaluated.out_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert (evaluated.out_dir / "plots" / "reliability.png").is_file()


def test_bad_requests_are_domain_errors(trained_run: Path, tmp_path: Path) -> None:
    from visiondeck.evaluate import EvaluationError, evaluate_run

    with pytest.raises(EvaluationError, match="binary"):
        evaluate_run(trained_run, out_dir=tmp_path, target_sensitivity=0.9, report=False)
    with pytest.raises(EvaluationError, match="positive class"):
        evaluate_run(trained_run, out_dir=tmp_path, positive_class="cat", report=False)
    with pytest.raises(EvaluationError, match="split"):
        evaluate_run(trained_run, "train", out_dir=tmp_path)
