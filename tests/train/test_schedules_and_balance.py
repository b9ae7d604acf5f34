"""Learning-rate schedules follow their formulas step by step; each balance mode changes the
loss or the drawn classes exactly as documented.

Schedules: tiny runs of 9 optimiser steps per epoch whose every step's learning rate is
recorded and compared with the schedule written out here. Balance: a training split of
24 / 12 / 12 images, so the class weights are known in advance, read through the same
`build_system` training uses (no training needed to see the loss and the sampler).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from tests.factories import write_learnable
from visiondeck.config import TrainConfig
from visiondeck.models import create_model
from visiondeck.train.module import Classifier
from visiondeck.train.runner import build_system, train

LR = 0.02
STEPS_PER_EPOCH = 9  # 36 training images, batches of 4
RUN = ("tracking.enabled=false", "train.batch_size=4", f"train.lr={LR}",
       "train.optimizer=sgd")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StepRates(L.Callback):
    """The learning rate each optimiser step used, and the epoch it belonged to."""

    def __init__(self) -> None:
        self.rates: list[tuple[int, float]] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        def stepped(optimizer, args, kwargs) -> None:
            self.rates.append((trainer.current_epoch,
                               max(group["lr"] for group in optimizer.param_groups)))

        trainer.optimizers[0].register_step_post_hook(stepped)


def _rates(tiny_recipe, *overrides: str) -> tuple[list[tuple[int, float]], Path]:
    seen = StepRates()
    result = train(tiny_recipe(*RUN, *overrides), progress=False, callbacks=[seen])
    return seen.rates, result.run_dir


# --------------------------------------------------------------------------- schedules


def _anneal(start: float, end: float, share: float) -> float:
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * share))


def _one_cycle(total: int) -> Callable[[int], float]:
    """Warm up from lr/20 to lr over the first quarter, then anneal to lr/4000 (cosine)."""
    peak = 0.25 * total - 1.0

    def rate(step: int) -> float:
        if step <= peak:
            return _anneal(LR / 20.0, LR, step / peak)
        return _anneal(LR, LR / 20.0 / 200.0, (step - peak) / (total - 1.0 - peak))

    return rate


def _warm_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up to lr over `warmup` steps, then half a cosine down to 0."""

    def rate(step: int) -> float:
        if step < warmup:
            return LR * (step + 1) / warmup
        return LR * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return rate


@pytest.mark.parametrize(("scheduler", "expected"), [
    ("onecycle", _one_cycle(2 * STEPS_PER_EPOCH)),
    # warmup_epochs=0.5 of 2 epochs: a quarter of the 18 steps, rounded down to 4
    ("cosine", _warm_cosine(2 * STEPS_PER_EPOCH, 4)),
    ("none", lambda step: LR),
], ids=["onecycle", "cosine", "none"])
def test_the_rate_of_every_step_follows_the_schedule(tiny_recipe, scheduler: str,
                                                     expected: Callable[[int], float]) -> None:
    rates, _ = _rates(tiny_recipe, f"train.scheduler={scheduler}", "train.epochs=2",
                      "train.warmup_epochs=0.5")
    assert len(rates) == 2 * STEPS_PER_EPOCH
    for step, (_, rate) in enumerate(rates):
        assert rate == pytest.approx(expected(step), rel=1e-6, abs=1e-12), step
    first, top, last = rates[0][1], max(r for _, r in rates), rates[-1][1]
    landmarks = {"onecycle": (LR / 20, LR, LR / 4000),  # from lr/20, up to lr, down to lr/4000
                 "cosine": (LR / 4, LR, _warm_cosine(18, 4)(17)),
                 "none": (LR, LR, LR)}
    assert (first, top, last) == pytest.approx(landmarks[scheduler], rel=0.01)


def test_plateau_cuts_the_rate_after_three_epochs_without_progress(tiny_recipe) -> None:
    import json

    epochs = 7
    rates, run = _rates(tiny_recipe, "train.scheduler=plateau", f"train.epochs={epochs}")
    history = json.loads((run / "history.json").read_text())
    # ReduceLROnPlateau(mode="max", factor=0.3, patience=2) replayed on the recorded val_acc:
    # an epoch counts as progress when it beats the best by the relative threshold 1e-4
    lr, best, bad, expected = LR, -math.inf, 0, []
    for row in history:
        expected.append(lr)  # the rate the epoch trained with
        if row["val_acc"] > best * (1 + 1e-4):
            best, bad = row["val_acc"], 0
        else:
            bad += 1
        if bad > 2:
            lr, bad = lr * 0.3, 0
    assert len(history) == epochs
    assert min(expected) < LR, f"val_acc {[r['val_acc'] for r in history]}: no plateau to test"
    assert [epoch for epoch, _ in rates] == [e for e in range(epochs)
                                             for _ in range(STEPS_PER_EPOCH)]
    for epoch, rate in rates:  # every step of an epoch at that epoch's rate
        assert rate == pytest.approx(expected[epoch], rel=1e-9), epoch
    assert [row["lr"] for row in history] == pytest.approx(expected)  # history.csv's column


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_the_optimizer_and_its_settings(optimizer: str) -> None:
    cfg = TrainConfig(optimizer=optimizer, scheduler="none", lr=0.05, momentum=0.8,
                      weight_decay=0.01)
    model = create_model("simple_cnn", 3, in_chans=3)
    built = Classifier(model, 3, cfg).configure_optimizers()
    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    assert type(built) is kind[optimizer]
    if optimizer == "sgd":
        assert built.defaults["momentum"] == 0.8 and built.defaults["nesterov"] is True
    decayed, plain = built.param_groups
    assert {g["lr"] for g in built.param_groups} == {0.05}
    # weight decay on weight matrices and kernels only, never on biases or norm scales
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- balance


@pytest.fixture
def lopsided(tiny_recipe, tmp_path: Path):
    """Factory: the tiny recipe over 48 "left" images and 24 of each other class, so the
    training split holds 24 / 12 / 12 images."""
    extra = write_learnable(tmp_path / "extra", seed=7)
    for i, path in enumerate(sorted((extra / "left").iterdir())):
        shutil.copyfile(path, tmp_path / "images" / "left" / f"more_{i:03d}.png")

    def make(balance: str, *overrides: str):
        recipe = tiny_recipe(*RUN, f"train.balance={balance}", *overrides)
        (tmp_path / "built").mkdir(exist_ok=True)
        built = build_system(recipe, tmp_path / "built", progress=False)
        counts = Counter(r.label for r in built.split.subset("train"))
        assert counts == {"left": 24, "middle": 12, "right": 12}
        return built

    return make


def _known_batch() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.5, 0.0],
                           [0.0, 0.0, 3.0], [1.0, 1.0, 1.0], [0.4, -0.2, 0.9]])
    return logits, torch.tensor([0, 2, 1, 2, 0, 1])


def test_weights_mode_weights_the_loss_by_inverse_frequency(lopsided, tiny_recipe) -> None:
    import json

    built = lopsided("weights")
    # 1/24 : 1/12 : 1/12 = 1 : 2 : 2, scaled to average 1
    assert built.class_weights == pytest.approx([0.6, 1.2, 1.2])
    logits, labels = _known_batch()
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([0.6, 1.2, 1.2]))
    assert float(built.system.loss(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    assert float(expected) != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-3)
    # and the run records what it used
    run = train(tiny_recipe(*RUN, "train.balance=weights"), progress=False, max_steps=1).run_dir
    info = json.loads((run / "run.json").read_text())
    assert info["balance"] == "weights"
    assert info["class_weights"] == pytest.approx([0.6, 1.2, 1.2])


@pytest.mark.parametrize("balance", ["none", "sampler"])
def test_modes_that_leave_the_loss_alone(lopsided, balance: str) -> None:
    built = lopsided(balance)
    logits, labels = _known_batch()
    assert float(built.system.loss(logits, labels)) == pytest.approx(
        float(F.cross_entropy(logits, labels)), rel=1e-6)


def test_focal_mode_is_the_unweighted_focal_loss_also_on_mixed_targets(lopsided) -> None:
    built = lopsided("focal", "train.focal_gamma=1.5")
    logits, labels = _known_batch()
    soft = 0.7 * F.one_hot(labels, 3).float() + 0.3 * F.one_hot(labels.roll(1), 3).float()
    p = torch.softmax(logits, dim=1)
    for target in (F.one_hot(labels, 3).float(), soft):  # hard labels and mixup's targets
        expected = (-(target * (1 - p) ** 1.5 * p.log()).sum(dim=1)).mean()
        given = labels if target is not soft else soft
        assert float(built.system.loss(logits, given)) == pytest.approx(float(expected),
                                                                        rel=1e-5)


def _drawn(built, epochs: int) -> Counter[str]:
    """The classes of `epochs` passes over one training loader, as Lightning makes them."""
    built.data.setup("fit")
    classes = built.split.classes
    loader = built.data.train_dataloader()
    drawn: Counter[str] = Counter()
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):  # as Lightning does at each epoch
            loader.sampler.set_epoch(epoch)
        for _, labels in loader:
            drawn.update(classes[int(i)] for i in labels)
    return drawn


def test_without_the_sampler_each_epoch_draws_every_image_once(lopsided) -> None:
    assert _drawn(lopsided("none"), 5) == {"left": 120, "middle": 60, "right": 60}


def test_the_sampler_draws_each_class_equally_often(lopsided) -> None:
    built = lopsided("sampler")
    built.data.setup("fit")
    sampler = built.data.train_dataloader().sampler
    labels = built.data.train_labels
    weights = sampler.weights
    # every class carries the same total weight, whatever its size…
    per_class = [float(weights[torch.as_tensor(labels == k)].sum()) for k in range(3)]
    assert per_class == pytest.approx([per_class[0]] * 3)
    assert sampler.replacement and sampler.num_samples == len(labels)
    # …so over 10 epochs (480 draws) each class is about a third, "left" far from its half
    drawn = _drawn(built, 10)
    assert sum(drawn.values()) == 480
    assert all(120 <= n <= 200 for n in drawn.values()), drawn
