"""The run's network as safetensors + model.json, rebuilt without Lightning or pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from visiondeck.train.artifacts import RunArtifactError, load_run_splits, load_trained


def test_load_trained_matches_the_best_checkpoint(trained_run: Path) -> None:
    trained = load_trained(trained_run)
    assert trained.classes == ["left", "middle", "right"]
    assert trained.spec.image_size == 16 and trained.spec.channels == 3
    assert not trained.model.training
    best = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    for key, value in trained.model.state_dict().items():
        assert torch.equal(value, best[f"model.{key}"]), key
    x = torch.randn(2, 3, 16, 16)
    assert trained.model(x).shape == (2, 3)


def test_load_run_splits_returns_the_recorded_split(trained_run: Path) -> None:
    split, test = load_run_splits(trained_run)
    info = json.loads((trained_run / "run.json").read_text())
    assert split.id == info["split"]["id"]
    assert test is None
    assert split.subset("test") and split.classes == ["left", "middle", "right"]


def test_missing_or_mismatched_artifacts_are_clear_errors(trained_run: Path, tmp_path) -> None:
    with pytest.raises(RunArtifactError, match="holds no trained model"):
        load_trained(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    info = json.loads((copy / "model" / "model.json").read_text())
    info["num_classes"] = 5  # weights of a 3-class head cannot fill a 5-class model
    (copy / "model" / "model.json").write_text(json.dumps(info))
    with pytest.raises(RunArtifactError, match="does not fit"):
        load_trained(copy)
