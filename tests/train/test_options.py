"""Every training key changes what training does: each test fails when its key is ignored.

Tiny runs (36 training images of 16 px in 9 batches of 4, simple_cnn, one epoch or a few
steps), watched by one recording callback: the optimiser's steps (learning rate, gradient
norm before and after clipping, the weights after each step), the batches, and what the
network's forward saw and returned.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from visiondeck.config import TrainConfig
from visiondeck.train.runner import RunResult, train
from visiondeck.train.trainer import resolve_precision

# 36 training images (12 per class) in 9 batches of 4; a constant learning rate
QUICK = ("tracking.enabled=false", "train.batch_size=4", "train.epochs=1",
         "train.scheduler=none", "train.optimizer=sgd", "train.lr=0.02")
BATCHES = 9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder(L.Callback):
    """What happened at each optimiser step and in each forward pass of training."""

    def __init__(self) -> None:
        self.batches = 0
        self.lrs: list[float] = []
        self.norm_before_clip: list[float] = []
        self.norm_at_step: list[float] = []
        self.weights: list[dict[str, torch.Tensor]] = []  # after each step
        self.logit_dtypes: set[torch.dtype] = set()
        self.input_channels_last: set[bool] = set()
        self.weight_channels_last: set[bool] = set()
        self._module: L.LightningModule | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._module = module
        trainer.optimizers[0].register_step_post_hook(self._stepped)
        module.model.register_forward_pre_hook(self._input)
        module.model.register_forward_hook(self._output)

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        # Lightning clips after this hook: these are the gradients backward produced
        self.norm_before_clip.append(_grad_norm(optimizer))

    def _stepped(self, optimizer, args, kwargs) -> None:
        self.lrs.append(max(group["lr"] for group in optimizer.param_groups))
        self.norm_at_step.append(_grad_norm(optimizer))  # what the update used
        assert self._module is not None
        self.weights.append({name: p.detach().float().cpu().clone()
                             for name, p in self._module.model.named_parameters()})

    def _input(self, model, args) -> None:
        if model.training:
            self.input_channels_last.add(args[0].is_contiguous(
                memory_format=torch.channels_last))
            conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            self.weight_channels_last.add(conv.weight.is_contiguous(
                memory_format=torch.channels_last) and not conv.weight.is_contiguous())

    def _output(self, model, args, output) -> None:
        if model.training:
            self.logit_dtypes.add(output.dtype)

    def on_train_batch_end(self, *args) -> None:
        self.batches += 1


def _grad_norm(optimizer: torch.optim.Optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    return float(torch.sqrt(sum(g.detach().float().pow(2).sum() for g in grads)))


def _run(tiny_recipe, *overrides: str, max_steps: int | None = None
         ) -> tuple[RunResult, Recorder]:
    recorder = Recorder()
    result = train(tiny_recipe(*QUICK, *overrides), progress=False, callbacks=[recorder],
                   max_steps=max_steps)
    return result, recorder


def test_grad_clip_bounds_the_norm_every_step_uses(tiny_recipe) -> None:
    result, seen = _run(tiny_recipe, "train.grad_clip=0.05")
    assert seen.batches == len(seen.norm_at_step) == BATCHES
    assert max(seen.norm_before_clip) > 0.1  # clipping had work to do…
    for before, used in zip(seen.norm_before_clip, seen.norm_at_step, strict=True):
        assert used == pytest.approx(min(before, 0.05), rel=1e-4)  # …and did exactly that
    assert result.epochs_run == 1


def test_accumulate_steps_once_per_k_batches(tiny_recipe) -> None:
    result, seen = _run(tiny_recipe, "train.accumulate=3")
    assert seen.batches == BATCHES and len(seen.lrs) == BATCHES // 3
    history = json.loads((result.run_dir / "history.json").read_text())
    assert history[-1]["step"] == BATCHES // 3


def test_patience_stops_after_that_many_epochs_without_a_better_val_acc(tiny_recipe) -> None:
    epochs, patience = 12, 2
    result, _ = _run(tiny_recipe, f"train.epochs={epochs}", f"train.patience={patience}")
    accuracies = [row["val_acc"] for row in
                  json.loads((result.run_dir / "history.json").read_text())]
    # the rule replayed on the recorded history: stop once `patience` epochs in a row
    # have not beaten the best so far
    best, waited, expected = -math.inf, 0, epochs
    for epoch, accuracy in enumerate(accuracies, start=1):
        best, waited = (accuracy, 0) if accuracy > best else (best, waited + 1)
        if waited == patience:
            expected = epoch
            break
    assert expected < epochs, f"no plateau in {accuracies}: the test proves nothing"
    assert result.epochs_run == len(accuracies) == expected


def test_ema_keeps_the_exponential_average_of_the_weights(tiny_recipe) -> None:
    from safetensors.torch import load_file

    decay = 0.5
    result, seen = _run(tiny_recipe, f"train.ema={decay}")
    assert len(seen.weights) == BATCHES
    average = dict(seen.weights[0])  # the first step starts the average
    for step in seen.weights[1:]:
        average = {k: decay * average[k] + (1 - decay) * step[k] for k in average}
    raw = seen.weights[-1]
    checkpoint = torch.load(result.run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=True)
    kept = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    current = {k.removeprefix("model."): v for k, v in
               checkpoint["current_model_state"].items()}
    saved = load_file(result.run_dir / "model" / "weights.safetensors")
    for name in average:
        assert torch.allclose(kept[name], average[name], atol=1e-6), name
        assert torch.allclose(saved[name], average[name], atol=1e-6), name  # served: the EMA
        assert torch.allclose(current[name], raw[name], atol=1e-6), name
    moved = max(float((average[k] - raw[k]).abs().max()) for k in average)
    assert moved > 1e-3  # the average is not the last weights under another name


def test_bf16_mixed_precision_runs_the_forward_in_bfloat16(tiny_recipe) -> None:
    _, mixed = _run(tiny_recipe, "train.precision=bf16-mixed", max_steps=2)
    assert mixed.logit_dtypes == {torch.bfloat16}
    _, full = _run(tiny_recipe, "train.precision='32'", max_steps=1)
    assert full.logit_dtypes == {torch.float32}


@pytest.mark.parametrize(("asked", "lightning"), [("32", "32-true"),
                                                   ("bf16-mixed", "bf16-mixed"),
                                                   ("16-mixed", "16-mixed")])
def test_an_explicit_precision_reaches_lightning(asked: str, lightning: str) -> None:
    assert resolve_precision(TrainConfig(precision=asked)) == lightning


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks mixed precision on a GPU")
def test_auto_precision_is_full_precision_on_a_cpu() -> None:
    assert resolve_precision(TrainConfig()) == "32-true"


def test_max_minutes_stops_training_at_the_first_step_past_the_limit(tiny_recipe) -> None:
    # 60 µs: over after any first step, however fast; 50 epochs would be 450 steps
    result, seen = _run(tiny_recipe, "train.epochs=50", "train.max_minutes=0.000001")
    assert seen.batches == len(seen.lrs) == 1
    assert result.epochs_run == 1


def test_mixup_and_cutmix_hand_the_loss_mixed_targets(tiny_recipe) -> None:
    targets: list[torch.Tensor] = []

    class Watch(L.Callback):
        def on_train_start(self, trainer, module) -> None:
            module.loss.register_forward_pre_hook(
                lambda loss, args: targets.append(args[1].detach().clone()))

    train(tiny_recipe(*QUICK, "train.mixup=0.4", "train.cutmix=1.0", "train.balance=focal"),
          progress=False, callbacks=[Watch()], max_steps=3)
    assert [tuple(t.shape) for t in targets] == [(4, 3)] * 3  # distributions, not labels
    for target in targets:
        assert torch.allclose(target.sum(dim=1), torch.ones(4))
    assert any(bool(((t > 0) & (t < 1)).any()) for t in targets)  # some really mixed


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_is_the_memory_format_of_weights_and_batches(tiny_recipe,
                                                                   channels_last: bool) -> None:
    _, seen = _run(tiny_recipe, f"train.channels_last={str(channels_last).lower()}",
                   max_steps=1)
    assert seen.input_channels_last == {channels_last}
    assert seen.weight_channels_last == {channels_last}


def test_find_lr_command_suggests_a_rate_from_a_plot_and_trains_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.factories import write_learnable
    from visiondeck.cli import app

    monkeypatch.chdir(tmp_path)
    # 120 training images in batches of 1: the whole 100-step range test fits in one epoch
    data = write_learnable(tmp_path / "images", per_class=60)
    result = CliRunner().invoke(app, [
        "train", "--find-lr", f"data.source={data}", "data.image_size=16",
        "data.augment=none", "data.cache=memory", "data.num_workers=1",
        "data.val_fraction=0.17", "data.test_fraction=0.17", "train.batch_size=1",
        f"output_dir={tmp_path / 'runs'}", "name=tiny", "tracking.enabled=false"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    suggested = float(text.split("suggested learning rate: ")[1].split()[0])
    assert 1e-6 <= suggested <= 1.0  # inside the range the finder sweeps
    assert f"use it with: train.lr={suggested:.2e}" in text
    plot = tmp_path / "runs" / "tiny-lr-find" / "lr_find.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny-lr-find"]
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # the finder's scratch is gone


def test_find_lr_sweeps_the_whole_range_on_a_small_data_set(tiny_recipe) -> None:
    from visiondeck.train.lr_find import find_lr

    recipe = tiny_recipe(*QUICK)  # 9 batches per epoch, 30 rates to try
    found = find_lr(recipe, num_training=30, min_lr=1e-5, max_lr=1e-2, progress=False)
    assert len(found.lrs) == 30  # every rate tried (none diverges below 1e-2 on this task)
    assert found.lrs[0] == pytest.approx(1e-5) and found.lrs[-1] == pytest.approx(1e-2)
    ratios = np.array(found.lrs[2:]) / np.array(found.lrs[1:-1])
    assert ratios == pytest.approx(np.full(28, ratios[0]))  # exponential steps between them
    assert found.suggestion in found.lrs
