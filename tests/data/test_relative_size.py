"""Too small is judged against the set's own sizes: a folder of 10×10 images is a set of
10×10 images, one 8×8 image among 64×64 ones is an outlier; `min_size` still sets an
absolute floor when given."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.factories import pattern, png_bytes, write_class_folder
from visiondeck.cli import app
from visiondeck.config import DataConfig
from visiondeck.data.catalog import decode_limits, scan
from visiondeck.data.prepare import check_data, prepare_split
from visiondeck.data.validate import validate


def test_a_set_of_tiny_images_is_usable(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 10, "b": 10}, size=10)
    result = check_data(tmp_path / "d", prepared=tmp_path / "p", limits=decode_limits(), workers=1)
    assert len(result.report.usable) == 20 and result.report.problems == []


def test_an_image_far_below_the_sets_size_is_flagged(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_folder(root, {"a": 6, "b": 6}, size=64)
    write_class_folder(root, {"a": 1}, size=15, start_seed=100)  # a/a_000.png overwritten
    write_class_folder(root, {"b": 1}, size=16, start_seed=200)  # b/b_000.png: 64/4, kept
    report = validate(scan(root, limits=decode_limits(), workers=1))
    statuses = {e.relpath: (e.status.value, e.message) for e in report.entries}
    assert statuses["a/a_000.png"][0] == "too_small"
    assert "median smaller side (64 px)" in statuses["a/a_000.png"][1]
    assert statuses["b/b_000.png"][0] == "ok"
    assert {e.relpath for e in report.problems} == {"a/a_000.png"}


def test_a_cached_verdict_is_made_again_against_the_new_set(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_folder(root, {"a": 6, "b": 6}, size=64)
    small = root / "a" / "a_000.png"
    small.write_bytes(png_bytes(pattern(100, 12)))
    first = check_data(root, prepared=tmp_path / "p", limits=decode_limits(), workers=1)
    assert [e.relpath for e in first.report.problems] == ["a/a_000.png"]
    # the others shrink to 12 px too; a_000.png itself is unchanged (taken from the cache)
    for n, path in enumerate(sorted(root.rglob("*.png"))):
        if path != small:
            path.write_bytes(png_bytes(pattern(300 + n, 12)))
    again = check_data(root, prepared=tmp_path / "p", limits=decode_limits(), workers=1)
    assert again.reused == 1
    assert again.report.problems == [] and len(again.report.usable) == 12


def test_min_size_given_is_an_absolute_floor(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_folder(root, {"a": 6, "b": 6}, size=10)
    cfg = DataConfig(source=str(root), prepared=str(tmp_path / "p"), min_size=16, num_workers=1)
    result = check_data(
        root, prepared=tmp_path / "p", limits=decode_limits(cfg), workers=1, size_outliers=False
    )
    assert {e.status.value for e in result.report.entries} == {"too_small"}
    assert "below the minimum of 16 pixels" in result.report.entries[0].message
    # and the relative rule is off then: prepare_split passes size_outliers=False
    write_class_folder(tmp_path / "e", {"a": 8, "b": 8}, size=64)
    write_class_folder(tmp_path / "e", {"a": 1}, size=16, start_seed=50)
    cfg = DataConfig(
        source=str(tmp_path / "e"), prepared=str(tmp_path / "q"), min_size=8, num_workers=1
    )
    outcome = prepare_split(cfg)
    assert len(outcome.check.report.usable) == 16


def test_data_check_accepts_a_folder_of_10px_images(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 10, "b": 10}, size=10)
    result = CliRunner().invoke(
        app, ["data", "check", str(tmp_path / "d"), "--out", str(tmp_path / "p"), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "p" / "data_report.json").read_text())
    assert report["usable"] == 20 and report["problems"] == []
    strict = CliRunner().invoke(
        app,
        [
            "data",
            "check",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "p2"),
            "--workers",
            "1",
            "--min-size",
            "16",
        ],
    )
    assert strict.exit_code == 3 and "too_small" in strict.output
