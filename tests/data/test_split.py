"""Splits: stratified, seeded, group-aware, saved, and checked against the data on reuse."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.factories import pattern, write_class_folder
from visiondeck.config import DataConfig
from visiondeck.data.catalog import scan
from visiondeck.data.prepare import prepare_split
from visiondeck.data.split import load_split, make_split, save_split, verify_split
from visiondeck.data.validate import validate
from visiondeck.errors import DataError, SplitMismatchError


def _usable(folder: Path):
    return validate(scan(folder, workers=1)).usable


def test_same_data_and_seed_give_the_same_split(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 40, "b": 20})
    usable = _usable(tmp_path / "d")
    first = make_split(usable, root=tmp_path / "d", seed=7)
    again = make_split(list(reversed(usable)), root=tmp_path / "d", seed=7)
    assert first.records == again.records and first.id == again.id
    other = make_split(usable, root=tmp_path / "d", seed=8)
    assert other.id != first.id


def test_split_is_stratified_with_requested_fractions(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 100, "b": 40})
    split = make_split(_usable(tmp_path / "d"), root=tmp_path / "d", val_fraction=0.2,
                       test_fraction=0.1, seed=1)
    counts = split.counts()
    assert counts["test"] == {"a": 10, "b": 4}
    assert counts["val"] == {"a": 20, "b": 8}
    assert counts["train"] == {"a": 70, "b": 28}
    assert len({r.relpath for r in split.records}) == 140


def test_near_duplicates_never_straddle_subsets(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_folder(root, {"a": 30, "b": 30})
    # 10 groups of three files with identical pixels but different bytes (other encoders)
    for g in range(10):
        picture = pattern(1000 + g)
        for level in (0, 6, 9):
            Image.fromarray(picture).save(root / "a" / f"group{g}_z{level}.png",
                                          compress_level=level)
    usable = _usable(root)
    assert len({e.sha256 for e in usable if "group0_" in e.relpath}) == 3
    for seed in range(5):
        split = make_split(usable, root=root, seed=seed, val_fraction=0.3, test_fraction=0.3)
        for g in range(10):
            sides = {r.subset for r in split.records if r.relpath.startswith(f"a/group{g}_")}
            assert len(sides) == 1, (seed, g, sides)


def test_kfold_assigns_balanced_folds_and_keeps_test_out(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 50, "b": 25})
    split = make_split(_usable(tmp_path / "d"), root=tmp_path / "d", folds=5,
                       test_fraction=0.2, seed=3)
    assert not split.subset("val")
    assert all(r.fold == -1 for r in split.subset("test"))
    pool = [r for r in split.records if r.fold >= 0]
    assert len(pool) == 60
    per_fold = Counter((r.fold, r.label) for r in pool)
    for label, n in (("a", 40), ("b", 20)):
        sizes = [per_fold[(k, label)] for k in range(5)]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    train, val = split.fold(2)
    assert {r.fold for r in val} == {2} and 2 not in {r.fold for r in train}
    with pytest.raises(DataError):
        split.fold(5)


def test_save_load_round_trip_and_hand_edits_detected(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 10, "b": 10})
    split = make_split(_usable(tmp_path / "d"), root=tmp_path / "d", seed=2)
    save_split(split, tmp_path / "s")
    loaded = load_split(tmp_path / "s")
    assert loaded.records == split.records and loaded.id == split.id
    assert (tmp_path / "s" / "classes.json").read_text().count('"') == 4
    text = (tmp_path / "s" / "split.csv").read_text()
    (tmp_path / "s" / "split.csv").write_text(text.replace(",train,", ",test,", 1))
    with pytest.raises(DataError, match="edited by hand"):
        load_split(tmp_path / "s")


def test_changing_one_image_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_folder(root, {"a": 15, "b": 15})
    cfg = DataConfig(source=str(root), seed=11)
    first = prepare_split(cfg, prepared=tmp_path / "prep")
    assert not first.reused
    again = prepare_split(cfg, prepared=tmp_path / "prep")
    assert again.reused and again.split.id == first.split.id

    changed = root / "b" / "b_004.png"
    array = np.asarray(Image.open(changed)).copy()
    array[0, 0] ^= 0xFF
    Image.fromarray(array).save(changed)
    check = verify_split(first.split, scan(root, workers=1))
    assert check.changed == ["b/b_004.png"] and not check.missing and not check.added
    with pytest.raises(SplitMismatchError, match="1 changed"):
        prepare_split(cfg, prepared=tmp_path / "prep")

    forced = prepare_split(cfg, prepared=tmp_path / "prep", force=True)
    assert not forced.reused and forced.split.id != first.split.id
    assert load_split(tmp_path / "prep").id == forced.split.id


def test_added_and_removed_files_and_new_parameters_are_detected(tmp_path: Path) -> None:
    root = tmp_path / "d"
    write_class_folder(root, {"a": 10, "b": 10})
    cfg = DataConfig(source=str(root))
    split = prepare_split(cfg, prepared=tmp_path / "p").split
    (root / "a" / "a_000.png").unlink()
    write_class_folder(root, {"b": 1}, start_seed=500)
    (root / "b" / "b_000.png").rename(root / "b" / "new.png")
    check = verify_split(split, scan(root, workers=1))
    assert "a/a_000.png" in check.missing and "b/new.png" in check.added
    with pytest.raises(SplitMismatchError):
        prepare_split(cfg.model_copy(update={"seed": 1}), prepared=tmp_path / "p")


def test_problem_files_are_left_out_of_splits(messy_folder: Path, tmp_path: Path) -> None:
    outcome = prepare_split(DataConfig(source=str(messy_folder)), prepared=tmp_path / "p")
    in_split = {r.relpath for r in outcome.split.records}
    problems = {e.relpath for e in outcome.check.report.problems}
    assert problems and not (in_split & problems)
    assert "cat/cat_000.png" in in_split


def test_impossible_fractions_are_refused(tmp_path: Path) -> None:
    write_class_folder(tmp_path / "d", {"a": 4, "b": 4})
    with pytest.raises(DataError):
        make_split(_usable(tmp_path / "d"), root=tmp_path / "d", val_fraction=0.5,
                   test_fraction=0.5)
