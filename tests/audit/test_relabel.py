"""`relabel`: the reviewed suspects.csv becomes a corrected manifest; images never change."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from tests.audit.conftest import FLIPPED, write_colours


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write(
    path: Path, rows: list[list[str]], header=("path", "given", "suggested", "score")
) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _manifest(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        return {row["path"]: row["label"] for row in csv.DictReader(handle)}


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    return write_colours(tmp_path / "colours")


def test_accepted_suggestions_relabel_and_images_stay_byte_identical(colours, tmp_path) -> None:
    from visiondeck.audit import relabel
    from visiondeck.data.sources import open_source

    before = _digests(colours)
    edits = _write(
        tmp_path / "edits.csv",
        [
            ["green/red_flipped.png", "green", "red", "0.99"],
            ["red/blue_flipped.png", "red", "blue", "0.98"],
            ["blue/checkerboard.png", "blue", "-", "0.90"],  # leave it out
            ["blue/blue_000.png", "blue", "blue", "0.10"],  # reviewed, kept
        ],
    )
    result = relabel(colours, edits)
    assert result.manifest == tmp_path / "colours.relabelled.csv"
    assert result.changed == {
        "green/red_flipped.png": ("green", "red"),
        "red/blue_flipped.png": ("red", "blue"),
    }
    assert result.dropped == ["blue/checkerboard.png"] and result.unchanged == 1
    rows = _manifest(result.manifest)
    assert rows["colours/green/red_flipped.png"] == "red"
    assert rows["colours/red/blue_flipped.png"] == "blue"
    assert rows["colours/green/green_000.png"] == "green"
    assert "colours/blue/checkerboard.png" not in rows
    assert len(rows) == result.rows == 36 + len(FLIPPED)
    assert _digests(colours) == before  # nothing moved, rewritten or deleted
    # the manifest is a source VisionDeck reads: the corrected labels come back
    files = {f.relpath: f.label for f in open_source(result.manifest).files()}
    assert files["colours/green/red_flipped.png"] == "red"


def test_a_manifest_source_gets_a_sibling_manifest(colours, tmp_path) -> None:
    from visiondeck.audit import relabel

    rows = [[f"colours/red/red_{i:03d}.png", "red"] for i in range(3)]
    source = _write(
        tmp_path / "data.csv",
        [*rows, ["colours/blue/blue_000.png", "blue"]],
        header=("path", "label"),
    )
    edits = _write(tmp_path / "edits.csv", [["colours/red/red_001.png", "red", "blue", "1"]])
    result = relabel(source, edits)
    assert result.manifest == tmp_path / "data.relabelled.csv"
    assert _manifest(result.manifest) == {
        "colours/red/red_000.png": "red",
        "colours/red/red_001.png": "blue",
        "colours/red/red_002.png": "red",
        "colours/blue/blue_000.png": "blue",
    }
    with pytest.raises(Exception, match="source manifest itself"):
        relabel(source, edits, out=source)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["red/red_000.png", "red", "rde", "1"], r"unknown class 'rde' \(did you mean 'red'\?\)"),
        (["red/nope.png", "red", "blue", "1"], r"unknown path 'red/nope.png'"),
        (["red/red_000.png", "red", "", "1"], r"empty label"),
        (["red/red_000.png", "green", "blue", "1"], r"labelled 'red' in the source, not 'green'"),
    ],
)
def test_bad_edits_are_refused_with_a_clear_error_and_nothing_written(
    colours, tmp_path, row, message
) -> None:
    from visiondeck.audit import relabel
    from visiondeck.errors import DataError

    edits = _write(tmp_path / "edits.csv", [["green/green_000.png", "green", "red", "1"], row])
    with pytest.raises(DataError, match=message) as caught:
        relabel(colours, edits)
    assert "row 3" in caught.value.message and "nothing was written" in caught.value.message
    assert not (tmp_path / "colours.relabelled.csv").exists()


def test_a_path_twice_and_missing_columns_are_refused(colours, tmp_path) -> None:
    from visiondeck.audit import relabel
    from visiondeck.errors import DataError

    twice = _write(
        tmp_path / "twice.csv",
        [["red/red_000.png", "red", "blue", "1"], ["red/red_000.png", "red", "green", "1"]],
    )
    with pytest.raises(DataError, match="listed twice"):
        relabel(colours, twice)
    columns = _write(tmp_path / "cols.csv", [["red/red_000.png", "blue"]], header=("path", "label"))
    with pytest.raises(DataError, match="needs the columns path and suggested"):
        relabel(colours, columns)


def test_the_relabel_command_reports_and_exits_with_the_data_error_code(colours, tmp_path) -> None:
    from typer.testing import CliRunner

    from visiondeck.cli import app

    good = _write(tmp_path / "edits.csv", [["green/red_flipped.png", "green", "red", "1"]])
    out = tmp_path / "fixed.csv"
    done = CliRunner().invoke(app, ["data", "relabel", str(colours), str(good), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "1 relabelled" in done.output and "green → red" in done.output
    assert _manifest(out)["colours/green/red_flipped.png"] == "red"
    bad = _write(tmp_path / "bad.csv", [["green/red_flipped.png", "green", "purple", "1"]])
    refused = CliRunner().invoke(app, ["data", "relabel", str(colours), str(bad)])
    assert refused.exit_code == 4
    assert "unknown class 'purple'" in refused.output
