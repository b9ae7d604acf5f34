"""Multi-label sources, checks and splits: both manifest forms, task detection, label
statistics, and iterative stratification keeping rare labels in every subset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.multilabel.synth import LABELS, write_set
from visiondeck.config import DataConfig
from visiondeck.data.catalog import scan
from visiondeck.data.multilabel import (
    cooccurrence,
    iterative_stratify,
    join_labels,
    label_matrix,
    split_labels,
)
from visiondeck.data.prepare import check_data, prepare_split
from visiondeck.data.sources import open_source
from visiondeck.data.split import load_split
from visiondeck.errors import DataError

SETS = [{"red"}, {"red", "blue"}, set(), {"green", "blue", "red"}, {"green"}, {"blue"}]


def test_label_strings_are_canonical() -> None:
    assert join_labels(["red", " blue", "red", ""]) == "blue|red"
    assert split_labels("blue|red") == ["blue", "red"]
    assert split_labels("") == []
    assert label_matrix(["blue|red", ""], ["blue", "green", "red"]).tolist() == [
        [1, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="purple"):
        label_matrix(["purple"], ["blue"])


@pytest.mark.parametrize("form", ["labels", "flags"])
def test_both_manifest_forms_read_the_same_label_sets(tmp_path: Path, form: str) -> None:
    manifest = write_set(tmp_path, sets=SETS, form=form)
    source = open_source(manifest)
    assert source.task == "multilabel"
    got = {f.relpath: f.label for f in source.files()}
    assert got == {f"images/img_{i:04d}.png": join_labels(s) for i, s in enumerate(SETS)}
    catalog = scan(source, workers=1)
    assert catalog.task == "multilabel"
    assert catalog.classes == list(LABELS)


def test_task_is_detected_or_set(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,red|blue\n")
    assert open_source(manifest).task == "single"  # a label column stays single-label
    forced = open_source(manifest, task="multilabel")
    assert forced.task == "multilabel"
    assert [f.label for f in forced.files()] == ["blue|red"]
    assert [f.label for f in open_source(manifest).files()] == ["red|blue"]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("path,red,note\na.png,1,hello\n")
    assert open_source(mixed).task == "single"  # not all 0/1: not read as label columns
    with pytest.raises(DataError, match="not all 0/1"):
        open_source(mixed, task="multilabel")
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="class-folder"):
        open_source(tmp_path / "folder", task="multilabel")


def test_parquet_flags_manifest(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_set(tmp_path, sets=SETS[:3], form="labels")
    table = pa.table({"path": [f"images/img_{i:04d}.png" for i in range(3)],
                      "red": [1, 1, 0], "blue": [False, True, False]})
    pq.write_table(table, tmp_path / "m.parquet")
    source = open_source(tmp_path / "m.parquet")
    assert source.task == "multilabel"
    assert [f.label for f in source.files()] == ["red", "blue|red", ""]


def test_check_report_counts_labels_and_cooccurrence(tmp_path: Path) -> None:
    manifest = write_set(tmp_path, sets=SETS)
    result = check_data(manifest, prepared=tmp_path / "prep", workers=1)
    report = json.loads((tmp_path / "prep" / "data_report.json").read_text())
    # blue: sets 1, 3, 5; green: 3, 4; red: 0, 1, 3
    assert result.report.class_counts == {"blue": 3, "green": 2, "red": 3}
    assert report["class_counts"] == {"blue": 3, "green": 2, "red": 3}
    assert report["task"] == "multilabel"
    stats = report["label_statistics"]
    assert stats["files_without_label"] == 1
    assert stats["labels_per_file"] == {"0": 1, "1": 3, "2": 1, "3": 1}
    # rows/columns blue, green, red: blue&green on set 3, blue&red on 1 and 3, green&red on 3
    assert stats["cooccurrence"] == [[3, 1, 2], [1, 2, 1], [2, 1, 3]]
    assert any("green" in w and "fewer than 3" in w for w in report["warnings"])


def test_cooccurrence_by_hand() -> None:
    assert cooccurrence(["a|b", "a", "", "b|c"], ["a", "b", "c"]) == [
        [2, 1, 0], [1, 2, 1], [0, 1, 1]]


def _rare_set() -> np.ndarray:
    """40 files: 'common' on every other file, 'rare' on 3 files only."""
    y = np.zeros((40, 2), dtype=np.int64)
    y[::2, 0] = 1
    y[[5, 17, 33], 1] = 1
    return y


def test_iterative_stratification_keeps_a_rare_label_in_every_subset() -> None:
    y = _rare_set()
    fractions = [0.15, 0.15, 0.7]
    # a plain shuffle cut 15/15/70 puts the 3 rare files one per subset only ~10 % of the
    # time (3! · 6 · 6 · 28 / (40 · 39 · 38))
    kept = 0
    for seed in range(20):
        order = np.random.default_rng(seed).permutation(40)
        naive = np.zeros(40, dtype=np.int64)
        naive[order[:6]], naive[order[6:12]], naive[order[12:]] = 0, 1, 2
        kept += {int(naive[i]) for i in (5, 17, 33)} == {0, 1, 2}
    assert kept <= 5
    for seed in range(10):
        chosen = iterative_stratify(y, fractions, seed=seed)
        assert sorted(int(chosen[i]) for i in (5, 17, 33)) == [0, 1, 2]
        sizes = np.bincount(chosen, minlength=3)
        assert abs(sizes[0] - 6) <= 1 and abs(sizes[1] - 6) <= 1
        common = np.bincount(chosen[y[:, 0] == 1], minlength=3)
        assert abs(common[0] - 3) <= 1 and abs(common[1] - 3) <= 1


def test_iterative_stratification_honours_group_sizes_and_empty_subsets() -> None:
    y = np.array([[2, 0], [0, 1], [1, 1], [0, 0]])
    chosen = iterative_stratify(y, [0.0, 1.0], sizes=np.array([2, 1, 1, 1]))
    assert chosen.tolist() == [1, 1, 1, 1]  # a subset asking for nothing gets nothing
    with pytest.raises(ValueError):
        iterative_stratify(y, [0.5, 0.6])


def _rare_manifest(root: Path) -> Path:
    sets = [{"common"} if i % 2 == 0 else set() for i in range(40)]
    for i in (5, 17, 33):
        sets[i] = {"rare"}
    # write_set draws the known colours only: name them by colour, then rename
    colour = {"common": "red", "rare": "blue"}
    manifest = write_set(root, sets=[{colour[s] for s in chosen} for chosen in sets])
    text = manifest.read_text().replace("red", "common").replace("blue", "rare")
    manifest.write_text(text)
    return manifest


def test_split_keeps_every_label_in_every_subset_and_is_reused(tmp_path: Path) -> None:
    manifest = _rare_manifest(tmp_path)
    cfg = DataConfig(source=str(manifest), prepared=str(tmp_path / "prep"), num_workers=1)
    outcome = prepare_split(cfg)
    split = outcome.split
    assert split.multilabel and split.classes == ["common", "rare"]
    counts = split.counts()
    assert all(counts[s]["rare"] == 1 for s in ("train", "val", "test"))
    assert sum(counts[s]["common"] for s in counts) == 20
    saved = json.loads((tmp_path / "prep" / "split.json").read_text())
    assert saved["task"] == "multilabel"
    assert saved["counts"]["test"]["rare"] == 1
    loaded = load_split(tmp_path / "prep")
    assert loaded.multilabel and loaded.id == split.id
    again = prepare_split(cfg)
    assert again.reused and again.split.id == split.id
    with (tmp_path / "prep" / "split.csv").open() as handle:
        labels = {row["label"] for row in csv.DictReader(handle)}
    assert labels == {"", "common", "rare"}


def test_k_fold_multilabel_split(tmp_path: Path) -> None:
    manifest = _rare_manifest(tmp_path)
    cfg = DataConfig(source=str(manifest), prepared=str(tmp_path / "prep"), num_workers=1,
                     folds=3, test_fraction=0.0)
    split = prepare_split(cfg).split
    rare_folds = sorted(r.fold for r in split.records if r.label == "rare")
    assert rare_folds == [0, 1, 2]
    assert not split.subset("val")


def test_data_commands_show_labels(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from visiondeck.cli import app

    manifest = write_set(tmp_path, sets=SETS * 4)
    runner = CliRunner()
    checked = runner.invoke(app, ["data", "check", str(manifest), "--out",
                                  str(tmp_path / "prep"), "--workers", "1"])
    assert checked.exit_code == 0, checked.output
    assert "per label" in checked.output and "co-occurrence" in checked.output
    split = runner.invoke(app, ["data", "split", str(manifest), "--out",
                                str(tmp_path / "prep"), "--workers", "1"])
    assert split.exit_code == 0, split.output
    saved = load_split(tmp_path / "prep")
    assert saved.multilabel
    assert all(n > 0 for subset in saved.counts().values() for n in subset.values())
    bad = runner.invoke(app, ["data", "split", str(manifest), "--task", "multi"])
    assert bad.exit_code != 0


def test_recipe_task_reads_a_label_column_as_sets(tmp_path: Path) -> None:
    manifest = write_set(tmp_path, sets=[s for s in SETS if s] * 4)
    manifest.write_text(manifest.read_text().replace("path,labels", "path,label", 1))
    single = DataConfig(source=str(manifest), prepared=str(tmp_path / "single"), num_workers=1)
    assert not prepare_split(single).split.multilabel  # "red|blue" is then one class name
    cfg = single.model_copy(update={"prepared": str(tmp_path / "multi"), "task": "multilabel"})
    split = prepare_split(cfg).split
    assert split.multilabel and split.classes == list(LABELS)
