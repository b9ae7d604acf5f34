"""Scanning and validating a folder seeded with every kind of bad and unusual file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.factories import (
    EXPECTED_NORMALISED,
    EXPECTED_STATUS,
    pattern,
    png_bytes,
    write_class_folder,
)
from visiondeck.data.catalog import Catalog, FileStatus, scan
from visiondeck.data.prepare import check_data
from visiondeck.data.sources import open_source
from visiondeck.data.validate import quarantine, validate
from visiondeck.errors import DataError
from visiondeck.imaging import DecodeLimits


@pytest.mark.parametrize("workers", [1, 2])
def test_every_bad_file_is_named_correctly(messy_folder: Path, workers: int) -> None:
    report = validate(scan(messy_folder, workers=workers))
    statuses = {e.relpath: e.status.value for e in report.entries}
    for relpath, expected in EXPECTED_STATUS.items():
        assert statuses[relpath] == expected, relpath
    problems = {e.relpath for e in report.problems}
    assert problems == set(EXPECTED_STATUS)
    assert report.has_issues
    # the original of the duplicate stays usable; hidden files never appear
    assert statuses["cat/cat_000.png"] == "ok"
    assert not any(".DS_Store" in p for p in statuses)
    assert report.unlabelled == ["stray.png"]


def test_unusual_modes_are_normalised_not_rejected(messy_folder: Path) -> None:
    report = validate(scan(messy_folder, workers=1))
    entries = report.entries
    by_path = {e.relpath: e for e in entries}
    for relpath, note in EXPECTED_NORMALISED.items():
        assert by_path[relpath].status is FileStatus.OK, relpath
        assert note in by_path[relpath].notes, (relpath, by_path[relpath].notes)
    assert {e.relpath for e in report.normalised} >= set(EXPECTED_NORMALISED)


def test_messages_say_what_is_wrong(messy_folder: Path) -> None:
    report = validate(scan(messy_folder, workers=1))
    by_path = {e.relpath: e for e in report.entries}
    assert "cat/cat_000.png" in by_path["cat/copy_of_cat_000.png"].message
    assert "['cat', 'dog']" in by_path["dog/conflict.png"].message
    assert "EPS" in by_path["dog/print.eps"].message or "PostScript" in by_path[
        "dog/print.eps"].message
    assert "100000" in by_path["cat/bomb.png"].message.replace(",", "")


def test_bomb_limit_and_min_size_are_configurable(messy_folder: Path) -> None:
    strict = DecodeLimits(max_pixels=32 * 32, min_side=40)
    report = validate(scan(messy_folder, limits=strict, workers=1))
    by_path = {e.relpath: e.status for e in report.entries}
    assert by_path["cat/cat_001.png"] is FileStatus.TOO_SMALL  # 32 px < 40
    assert by_path["cat/cmyk.jpg"] is FileStatus.BOMB  # 48*48 > 32*32


def test_class_counts_and_imbalance_warning(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"common": 40, "rare": 5})
    report = validate(scan(tmp_path / "d", workers=1))
    assert report.class_counts == {"common": 40, "rare": 5}
    assert report.imbalance_ratio == pytest.approx(8.0)
    assert any("imbalanced" in w and "train.balance" in w for w in report.warnings)
    balanced = validate(scan(tmp_path / "d" / ".." / "d", workers=1))
    assert balanced.classes == ["common", "rare"]


def test_quarantine_moves_exactly_the_problem_files(messy_folder: Path, tmp_path: Path) -> None:
    report = validate(scan(messy_folder, workers=1))
    before = {p.relative_to(messy_folder).as_posix() for p in messy_folder.rglob("*")
              if p.is_file()}
    dest = tmp_path / "quarantine"
    result = quarantine(report, dest)
    after = {p.relative_to(messy_folder).as_posix() for p in messy_folder.rglob("*")
             if p.is_file()}
    assert {r for r, _ in result.moved} == set(EXPECTED_STATUS)
    assert before - after == set(EXPECTED_STATUS)
    for relpath, status in EXPECTED_STATUS.items():
        assert (dest / status / relpath).exists()
    manifest = json.loads(result.manifest.read_text())
    assert {m["relpath"] for m in manifest} == set(EXPECTED_STATUS)
    # what is left is clean
    assert not validate(scan(messy_folder, workers=1)).has_issues


def test_quarantine_refuses_a_folder_inside_the_data(messy_folder: Path) -> None:
    report = validate(scan(messy_folder, workers=1))
    with pytest.raises(DataError, match="inside the data folder"):
        quarantine(report, messy_folder / "bad")


def test_manifest_sources_csv_and_parquet(tmp_path: Path) -> None:
    import pyarrow as pa  # declared in the parquet extra: missing fails, never skips
    import pyarrow.parquet as pq

    images = tmp_path / "flat"
    images.mkdir()
    rows = []
    for i in range(6):
        name = f"img{i}.png"
        (images / name).write_bytes(png_bytes(pattern(i)))
        rows.append((f"flat/{name}", "yes" if i % 2 else "no"))
    rows.append(("flat/gone.png", "no"))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "\n".join(f"{p},{lab}" for p, lab in rows) + "\n")
    report = validate(scan(csv_path, workers=1))
    assert report.class_counts == {"no": 3, "yes": 3}
    assert {e.relpath: e.status for e in report.problems} == {"flat/gone.png": FileStatus.MISSING}

    table = pa.table({"filename": [p for p, _ in rows[:6]], "class": [lab for _, lab in rows[:6]]})
    pq.write_table(table, tmp_path / "labels.parquet")
    report = validate(scan(tmp_path / "labels.parquet", workers=1))
    assert report.class_counts == {"no": 3, "yes": 3} and not report.problems


def test_manifest_without_label_column_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("file,kind\na.png,x\n")
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="label column"):
        scan(bad, workers=1)


def test_nested_folders_take_the_first_level_as_class(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 2, "b": 2})
    nested = tmp_path / "d" / "a" / "2024" / "march"
    nested.mkdir(parents=True)
    shutil.copy(tmp_path / "d" / "b" / "b_000.png", nested / "deep.png")
    source = open_source(tmp_path / "d")
    labels = {f.relpath: f.label for f in source.files()}
    assert labels["a/2024/march/deep.png"] == "a"


def test_rescan_reuses_unchanged_files_and_sees_changes(clean_folder: Path, tmp_path: Path) -> None:
    first = check_data(clean_folder, prepared=tmp_path / "prep", workers=1)
    assert first.reused == 0
    catalog_file = tmp_path / "prep" / "catalog.jsonl"
    assert Catalog.load(catalog_file).entries == first.catalog.entries
    target = clean_folder / "bee" / "bee_003.png"
    target.write_bytes(b"not any more")
    os.utime(target, ns=(1, 1))
    second = check_data(clean_folder, prepared=tmp_path / "prep", workers=1)
    assert second.reused == len(first.catalog.entries) - 1
    assert {e.relpath for e in second.report.problems} == {"bee/bee_003.png"}
