"""Training end to end on tiny data: run folder, schedulers, gate, freezing, resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.factories import crash_at_epoch
from visiondeck.train.runner import TrainingError, resume, train


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_run_folder_holds_everything(tiny_recipe) -> None:
    result = train(tiny_recipe("train.epochs=3"), progress=False)
    run = result.run_dir
    for name in ("recipe.yaml", "classes.json", "history.csv", "history.json", "run.json",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).exists(), name
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all("val_acc" in row and "train_loss_epoch" in row for row in history)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["split"]["classes"] == ["left", "middle",
                                                                          "right"]
    assert info["class_weights"] == pytest.approx([1.0, 1.0, 1.0])
    assert result.metrics["best_val_acc"] >= 0.6  # the task is easy: it must learn something
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    # a second run never overwrites the first
    assert train(tiny_recipe("train.epochs=1"), progress=False).run_dir.name == "tiny-2"


def test_quality_gate_pass_and_fail(tiny_recipe) -> None:
    passed = train(tiny_recipe("train.epochs=3", "train.min_val_accuracy=0.05"),
                   progress=False)
    assert passed.status == "passed" and passed.gate.passed
    failed = train(tiny_recipe("train.epochs=1", "train.min_val_accuracy=1.0",
                               "train.lr=1e-6"), progress=False)
    assert failed.status == "failed_gate" and not failed.gate.passed
    info = json.loads((failed.run_dir / "run.json").read_text())
    assert info["status"] == "failed_gate" and info["gate"]["passed"] is False


def test_progressive_unfreezing_opens_one_stage_per_epoch(tiny_recipe) -> None:
    from visiondeck.models import backbone_stages

    seen: list[int] = []

    class Count(L.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            stages = backbone_stages(module.model)
            seen.append(sum(any(p.requires_grad for p in s.parameters()) for s in stages))

    train(tiny_recipe("train.freeze=progressive", "train.epochs=3"), progress=False,
          callbacks=[Count()])
    assert seen == [0, 1, 2]





def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_recipe, tmp_path) -> None:
    recipe = tiny_recipe("train.epochs=4", "data.augment=standard", "train.mixup=0.2")
    straight = train(recipe, run_dir=tmp_path / "runs" / "straight", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, run_dir=tmp_path / "runs" / "crashed", progress=False,
              callbacks=[crash_at_epoch(2)])
    crashed = tmp_path / "runs" / "crashed"
    assert len(json.loads((crashed / "history.json").read_text())) == 2
    resumed = resume(crashed, progress=False)
    assert resumed.epochs_run == 4
    history = json.loads((crashed / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    a = _state(straight.run_dir / "checkpoints" / "last.ckpt")
    b = _state(crashed / "checkpoints" / "last.ckpt")
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_resume_refuses_what_is_not_a_run(tmp_path) -> None:
    with pytest.raises(TrainingError, match="not a run folder"):
        resume(tmp_path)


def test_bad_file_during_training_is_skipped_not_fatal(tiny_recipe, tmp_path) -> None:
    # 36 training files in batches of 12: no batch is dropped, so the bad file is surely read
    recipe = tiny_recipe("data.cache=off", "train.epochs=1", "train.batch_size=12")

    class Corrupt(L.Callback):  # the file goes bad after the split check, before any read
        # `setup` runs after the data module's setup and before any loader exists (in
        # on_train_start, loader workers may already have read the file: a race)
        def setup(self, trainer, module, stage) -> None:
            relpath = trainer.datamodule.subsets.train[0].relpath
            (tmp_path / "images" / relpath).write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    result = train(recipe, progress=False, callbacks=[Corrupt()])
    assert result.skipped_files == 1
    assert json.loads((result.run_dir / "run.json").read_text())["skipped_files"] == 1
