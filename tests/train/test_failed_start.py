"""A run that fails before its training starts leaves nothing behind; `force` accepts the
new split that caused the clash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories import tiny_overrides, write_learnable
from visiondeck.config import load_recipe
from visiondeck.errors import DataError, SplitMismatchError
from visiondeck.train.runner import train


def _recipe(data: Path, tmp_path: Path, *extra: str):
    return load_recipe(None, tiny_overrides(
        data, f"data.prepared={tmp_path / 'prepared'}", f"output_dir={tmp_path / 'runs'}",
        "name=start", "train.epochs=1", "train.batch_size=8", *extra))


def test_a_split_clash_leaves_no_run_folder_and_force_trains(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "data", per_class=12)
    first = train(_recipe(data, tmp_path), progress=False)
    assert first.run_dir.name == "start"
    with pytest.raises(SplitMismatchError):
        train(_recipe(data, tmp_path, "data.val_fraction=0.3"), progress=False)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["start"]
    forced = train(_recipe(data, tmp_path, "data.val_fraction=0.3"), progress=False, force=True)
    assert forced.run_dir.name == "start-2"  # the next free name, no leftover in between
    split = json.loads((tmp_path / "prepared" / "split.json").read_text())
    assert split["val_fraction"] == 0.3


def test_a_failed_start_in_a_given_empty_folder_removes_it(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "given"
    folder.mkdir(parents=True)
    with pytest.raises(DataError):
        train(_recipe(tmp_path / "missing", tmp_path), run_dir=folder, progress=False)
    assert not folder.exists()
    # a folder that held something before is never removed
    kept = tmp_path / "runs" / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        train(_recipe(tmp_path / "missing", tmp_path), run_dir=kept, progress=False)
    assert (kept / "notes.txt").read_text() == "mine"
