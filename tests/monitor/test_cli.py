"""`visiondeck monitor report` and `visiondeck retrain` over a real server's store."""

from __future__ import annotations

import csv
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.monitor.conftest import darkened, in_distribution, post_images
from visiondeck.cli import app

runner = CliRunner()


def _serve(make_settings, tmp_path: Path, phases, **changes) -> tuple[Path, list[datetime]]:
    """Run a server through `phases` (lists of images, labelled by `label_with` when given);
    returns its data dir and the time after each phase. Closing it flushes the store."""
    from visiondeck.serve.app import create_app

    settings = make_settings(keep_uploads=str(tmp_path / "kept"), **changes)
    marks = []
    with TestClient(create_app(settings)) as client:
        for images, label_with in phases:
            for p in post_images(client, images):
                if label_with is not None:
                    client.put(f"/predictions/{p['id']}/label",
                               json={"label": label_with(p), "token": p["label_token"]})
            marks.append(datetime.now(UTC))
    return settings.data_dir, marks


def _report(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["monitor", "report", *args])
    return result.exit_code, result.output


def test_report_over_a_time_range(make_settings, serve_bundle: Path, tmp_path: Path) -> None:
    data_dir, marks = _serve(make_settings, tmp_path, [
        (in_distribution(40, seed=301), lambda p: p["predicted"]),
        (darkened(in_distribution(40, seed=302)), None)])
    out = tmp_path / "report.html"
    code, output = _report("--serve-dir", str(data_dir), "--bundle", str(serve_bundle),
                           "-o", str(out))
    assert code == 3, output  # drift found
    page = out.read_text()
    assert "ALARM" in page and "brightness" in page and "<svg" in page
    assert "80 stored predictions" in page and "40 labelled predictions" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # opens offline

    healthy = tmp_path / "healthy.html"
    code, output = _report("--serve-dir", str(data_dir), "--bundle", str(serve_bundle),
                           "--until", marks[0].isoformat(), "-o", str(healthy))
    assert code == 0, output
    assert "No drift detected" in healthy.read_text() and "40 predictions" in output


def test_report_keeps_to_the_bundle_it_is_given(make_settings, serve_bundle: Path,
                                                tmp_path: Path) -> None:
    data_dir, _ = _serve(make_settings, tmp_path, [(in_distribution(5, seed=303), None)])
    other = Path(shutil.copytree(serve_bundle, tmp_path / "other"))
    info = json.loads((other / "bundle.json").read_text())
    (other / "bundle.json").write_text(json.dumps(info | {"name": "other"}))
    code, output = _report("--serve-dir", str(data_dir), "--bundle", str(other),
                           "-o", str(tmp_path / "r.html"))
    assert code == 0 and "0 predictions" in output and "other model versions" in output
    code, output = _report("--serve-dir", str(data_dir), "--bundle", str(other),
                           "--any-version", "-o", str(tmp_path / "r.html"))
    assert code == 0 and "5 predictions" in output


def test_report_without_a_store_or_reference_says_what_to_do(serve_bundle: Path,
                                                            tmp_path: Path) -> None:
    code, output = _report("--serve-dir", str(tmp_path / "nothing"), "--bundle",
                           str(serve_bundle))
    assert code == 11 and "no prediction store" in output and "--store" in output


def test_retrain_decides_gathers_and_merges(make_settings, serve_bundle: Path,
                                            trained_run: Path, tmp_path: Path) -> None:
    images = in_distribution(24, seed=304)
    # the operator's labels disagree with the model on every image: accuracy 0
    data_dir, _ = _serve(make_settings, tmp_path, [
        (images, lambda p: "left" if p["predicted"] != "left" else "right")])
    common = ["retrain", str(trained_run / "recipe.yaml"), "--bundle", str(serve_bundle),
              "--serve-dir", str(data_dir), "--uploads", str(tmp_path / "kept"),
              "--labelled-dir", str(tmp_path / "labelled" / "tiny")]
    quiet = runner.invoke(app, [*common, "--dry-run"])
    assert quiet.exit_code == 0 and "no retrain needed" in quiet.output

    result = runner.invoke(app, [*common, "--min-accuracy", "0.9", "--min-labelled", "10",
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "live accuracy 0.000 on 24 labelled predictions is below 0.900" in result.output
    gathered = sorted((tmp_path / "labelled" / "tiny").rglob("*.png"))
    assert len(gathered) == 24
    assert {p.parent.name for p in gathered} <= {"left", "right"}
    [manifest] = (tmp_path / "labelled").glob("tiny.retrain-*.csv")
    with manifest.open() as handle:
        rows = list(csv.DictReader(handle))
    recipe_images = [r for r in rows if "/images/" in r["path"]]
    assert len(recipe_images) == 96 and len(rows) == 96 + 24  # the recipe's data + the new
    assert all(Path(r["path"]).is_file() for r in rows)
    assert f"data.source={manifest.resolve()}" in result.output.replace("\n", "")


def test_retrain_on_drift_and_without_kept_images(make_settings, serve_bundle: Path,
                                                  trained_run: Path, tmp_path: Path) -> None:
    data_dir, _ = _serve(make_settings, tmp_path, [
        (darkened(in_distribution(40, seed=305)), None)])
    common = ["retrain", str(trained_run / "recipe.yaml"), "--bundle", str(serve_bundle),
              "--serve-dir", str(data_dir), "--on-drift", "--dry-run"]
    result = runner.invoke(app, [*common, "--uploads", str(tmp_path / "kept"),
                                 "--labelled-dir", str(tmp_path / "lab")])
    assert "drift alarms: brightness/psi" in result.output
    assert result.exit_code == 11 and "nothing new to train on" in result.output  # no labels
    missing = runner.invoke(app, [*common, "--uploads", str(tmp_path / "nowhere")])
    assert missing.exit_code == 11 and "VISIONDECK_KEEP_UPLOADS" in missing.output


@pytest.mark.parametrize("text", ["7d", "90m", "2025-05-01T12:00", "2025-05-01T12:00:00Z"])
def test_times_are_ages_or_iso(text: str) -> None:
    from visiondeck.cli.monitor_cmd import parse_time

    value = parse_time(text)
    assert value is not None and value.tzinfo is not None and value <= datetime.now(UTC)


def test_served_versions_match_what_the_server_reports(make_client, serve_bundle) -> None:
    from visiondeck.cli.monitor_cmd import served_versions
    from visiondeck.export.bundle import load_bundle

    version = make_client().get("/model").json()["version"]
    assert served_versions(load_bundle(serve_bundle))["fp32"] == version


@pytest.mark.slow  # ~25 s: a real pipeline run (train 1 epoch, evaluate, export)
def test_retrain_runs_the_pipeline_on_the_merged_data(make_settings, serve_bundle: Path,
                                                      trained_run: Path, tmp_path: Path) -> None:
    """End to end: low live accuracy → the labelled images join the recipe's data → the
    pipeline trains, evaluates and exports a new Bundle whose split holds them."""
    from visiondeck.export.bundle import load_bundle

    data_dir, _ = _serve(make_settings, tmp_path, [
        (in_distribution(24, seed=306), lambda p: "left" if p["predicted"] != "left"
         else "right")])
    result = runner.invoke(app, [
        "retrain", str(trained_run / "recipe.yaml"), f"output_dir={tmp_path / 'runs'}",
        "tracking.enabled=false", "train.epochs=1", "--bundle", str(serve_bundle),
        "--serve-dir", str(data_dir), "--uploads", str(tmp_path / "kept"),
        "--labelled-dir", str(tmp_path / "labelled" / "tiny"), "--min-accuracy", "0.9",
        "--min-labelled", "10"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "shared-retrain"
    with (tmp_path / "labelled" / "tiny.prepared" / "split.csv").open() as handle:
        split = list(csv.DictReader(handle))
    gathered = [row for row in split if row["relpath"].startswith("tiny/")]
    assert len(gathered) == 24 and len(split) == 96 + 24  # the new images are in the split
    assert {row["subset"] for row in gathered} >= {"train"}
    bundle = load_bundle(run / "bundle")
    assert bundle.classes == ["left", "middle", "right"]
    assert bundle.info["reference"]["n"] > 0  # and the new Bundle is monitored too
