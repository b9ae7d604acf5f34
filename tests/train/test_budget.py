"""The time budget: reading `--time`, the epochs a measured throughput buys, and the guard
that ends a run at an epoch's end when the next would overrun (mechanisms, no wall clock)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.factories import tiny_overrides, write_learnable
from visiondeck.config import load_recipe
from visiondeck.errors import ConfigError
from visiondeck.train import budget
from visiondeck.train.budget import (
    BudgetGuard,
    Throughput,
    measure_throughput,
    parse_duration,
    plan_epochs,
    train_within,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10m", 600),
        ("90s", 90),
        ("1h30m", 5400),
        ("1.5m", 90),
        ("600", 600),
        (" 2 min ", 120),
        (45, 45),
    ],
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5x", "0", "-3m", "m"])
def test_parse_duration_refuses_nonsense(text) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def _throughput(**changes) -> Throughput:
    values = {
        "step_s": 0.1,
        "val_batch_s": 0.05,
        "steps_per_epoch": 100,
        "val_batches": 20,
        "setup_s": 2.0,
        "decode_s": 4.0,
        "probe_s": 3.0,
    }
    return Throughput(**(values | changes))


def test_epochs_are_what_fits_in_the_budget_left() -> None:
    t = _throughput()
    assert t.epoch_s == pytest.approx(11.0)  # 100 × 0.1 + 20 × 0.05
    # 120 s × 0.96 = 115.2; minus the probe 3, start-up 2 and a quarter of decoding 1
    plan = plan_epochs(120, t, spent_s=3.0)
    # 109.2 // 11 = 9 whole epochs would leave 10.2 s (8.5 % of the budget) unused: ten
    # epochs of (109.2 - 10 × 1) / 10 / 0.1 = 99 steps fill it
    assert (plan.epochs, plan.epoch_steps) == (10, 99)
    assert plan.predicted_s == pytest.approx(3 + 3 + 10 * (99 * 0.1 + 1))
    assert 0.9 * 120 <= plan.predicted_s <= 120
    # the same throughput with ten times the budget buys ten times the epochs, nearly;
    # what whole epochs leave there (2 s) is under 3 % of it: whole epochs
    plan = plan_epochs(1200, t, spent_s=3.0)
    assert (plan.epochs, plan.epoch_steps) == (104, None)  # (1152 - 6) // 11


def test_whole_epochs_are_kept_when_they_nearly_fill_the_budget() -> None:
    t = _throughput()
    # 120 × 0.96 - 3 - 3 = 109.2: ten epochs of 10.9 s fill it to within 0.2 s
    plan = plan_epochs(120, _throughput(step_s=0.099), spent_s=3.0)
    assert (plan.epochs, plan.epoch_steps) == (10, None)
    assert t.epoch_s > 10.9
    # coarse steps: 4 epochs of 4 s leave 3.2 of 19.2 s, but 5 epochs of 2 one-second
    # steps would fill less (15 s): whole epochs
    coarse = _throughput(step_s=1.0, val_batch_s=0.5, steps_per_epoch=3, val_batches=2,
                         setup_s=0.0, decode_s=0.0)
    assert (plan_epochs(20, coarse).epochs, plan_epochs(20, coarse).epoch_steps) == (4, None)


def test_when_one_epoch_does_not_fit_the_epoch_is_cut_to_the_steps_that_do() -> None:
    # 9.6 - 1 - 2 - 0.5 (decoding's share, at most 5 % of the budget) = 6.1 s where an
    # epoch takes 26 s: four short epochs, each validated (1 s), of 2 steps of 0.25 s
    plan = plan_epochs(10, _throughput(step_s=0.25), spent_s=1.0)
    assert (plan.epochs, plan.epoch_steps) == (4, 2)
    assert plan.predicted_s == pytest.approx(1 + 2.5 + 4 * (2 * 0.25 + 1))
    # not even four validations fit: one epoch of the steps that do (4.1 s of 0.25 s)
    plan = plan_epochs(10, _throughput(step_s=0.25, val_batch_s=0.07), spent_s=1.0)
    assert (plan.epochs, plan.epoch_steps) == (1, 18)
    # two whole epochs would fit: four shorter ones give the guard more chances to act
    plan = plan_epochs(40, _throughput(step_s=0.125), spent_s=3.0)  # 32.4 s, 13.5 s each
    assert (plan.epochs, plan.epoch_steps) == (4, 56)  # (32.4 - 4 × 1) / 0.125 = 227 steps


def _fake_trainer(epoch: int, max_epochs: int) -> SimpleNamespace:
    return SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, should_stop=False)


def test_guard_stops_when_the_next_epoch_would_overrun(monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(budget.time, "monotonic", lambda: now[0])
    guard = BudgetGuard(deadline=1100.0, budget_s=100.0)  # tolerance 3 s
    trainer = _fake_trainer(0, 10)
    for epoch, length in enumerate([30.0, 30.0]):
        trainer.current_epoch = epoch
        guard.on_train_epoch_start(trainer, None)
        now[0] += length
        guard.on_train_epoch_end(trainer, None)
        assert trainer.should_stop is False  # 1030 + 30, 1060 + 30 ≤ 1103
    trainer.current_epoch = 2
    guard.on_train_epoch_start(trainer, None)
    now[0] += 15.0  # 1075: another 30 s epoch would end at 1105 > 1103
    guard.on_train_epoch_end(trainer, None)
    assert trainer.should_stop is True and guard.stopped_early is True
    # its state is the time left, so a resumed run keeps the same budget
    assert guard.state_dict()["left_s"] == pytest.approx(25.0)


def _tiny_recipe(data: Path, runs: Path, *extra: str):
    return load_recipe(None, tiny_overrides(
        data, f"data.prepared={runs / 'prepared'}", f"output_dir={runs}", "name=budget",
        "train.batch_size=8", "train.lr=0.01", *extra))


def test_probe_times_real_batches_of_the_recipe(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "data", per_class=16)
    recipe = _tiny_recipe(data, tmp_path / "runs")
    t = measure_throughput(recipe, steps=3, val_steps=2)
    # 3 × 16 images: 24 train (8 per batch, drop_last) and 12 val (2 batches of ≤ 8)
    assert (t.steps_per_epoch, t.val_batches) == (3, 2)
    assert t.step_s > 0 and t.val_batch_s > 0 and t.probe_s >= t.decode_s


def test_train_within_sets_the_epochs_from_the_measured_throughput(
    tmp_path: Path, monkeypatch
) -> None:
    data = write_learnable(tmp_path / "data", per_class=16)
    recipe = _tiny_recipe(data, tmp_path / "runs", "train.epochs=40")
    measured = _throughput(
        step_s=1.0, val_batch_s=0.5, steps_per_epoch=3, val_batches=2, setup_s=0.0, decode_s=0.0
    )  # 4 s per epoch
    monkeypatch.setattr(budget, "measure_throughput", lambda recipe, **kw: measured)
    monkeypatch.setattr(budget.time, "monotonic", lambda: 1000.0)  # the guard never fires
    result, plan = train_within(recipe, 20.0, progress=False, notes={"why": "test"})
    # 19.2 s minus what the (instant) probe spent: 4 epochs of 4 s, whatever the recipe said
    assert plan.epochs == 4 and plan.epoch_steps is None
    saved = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())
    assert saved["train"]["epochs"] == 4  # the run repeats exactly from its recipe.yaml
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    auto = json.loads((result.run_dir / "auto.json").read_text())
    assert auto["why"] == "test" and auto["budget"]["plan"]["epochs"] == 4
    assert auto["budget"]["plan"]["throughput"]["epoch_s"] == 4.0


def test_guard_ends_a_real_run_at_an_epoch_end_past_its_deadline(
    tmp_path: Path, monkeypatch
) -> None:
    data = write_learnable(tmp_path / "data", per_class=16)
    recipe = _tiny_recipe(data, tmp_path / "runs", "train.epochs=3")
    # the budget is already spent when training starts: one epoch, then a clean stop
    monkeypatch.setattr(budget.time, "monotonic", _clock_from(0.0, step=50.0))
    result, plan = train_within(recipe, 1.0, progress=False, keep_epochs=True)
    assert plan is None and result.epochs_run == 1
    assert (result.run_dir / "model" / "weights.safetensors").is_file()
    auto = json.loads((result.run_dir / "auto.json").read_text())
    assert auto["budget"]["stopped_early_by_guard"] is True


def _clock_from(start: float, step: float):
    state = {"now": start}

    def tick() -> float:
        state["now"] += step
        return state["now"]

    return tick


def test_an_epoch_that_does_not_fit_is_cut_and_still_validated(tmp_path: Path, monkeypatch) -> None:
    data = write_learnable(tmp_path / "data", per_class=16)
    recipe = _tiny_recipe(data, tmp_path / "runs", "train.epochs=5")
    measured = _throughput(
        step_s=1.0, val_batch_s=0.5, steps_per_epoch=3, val_batches=2, setup_s=0.0, decode_s=0.0
    )  # 4 s per epoch
    monkeypatch.setattr(budget, "measure_throughput", lambda recipe, **kw: measured)
    monkeypatch.setattr(budget.time, "monotonic", lambda: 1000.0)  # the guard never fires
    result, plan = train_within(recipe, 4.0, progress=False)
    # 3.84 s: 1 s of validation and 2 of the 3 steps
    assert (plan.epochs, plan.epoch_steps) == (1, 2)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert len(history) == 1 and history[0]["step"] == 2 and "val_acc" in history[0]
    assert "best_val_acc" in result.metrics


def test_the_probe_tries_each_thread_count_and_keeps_the_faster(monkeypatch) -> None:
    import torch

    from visiondeck.train.budget import _Clock

    before = torch.get_num_threads()
    now = [0.0]
    monkeypatch.setattr(budget.time, "perf_counter", lambda: now[0])
    clock = _Clock(cap_s=0.0, warmup=2, trial=3, threads=[2, 1])
    trainer = SimpleNamespace(should_stop=False)
    cost = {2: 0.9, 1: 0.3}  # two threads fight over a busy CPU: one is faster
    seen = []
    try:
        for i in range(clock.enough):
            clock.on_train_batch_start(trainer, None, None, i)
            seen.append(torch.get_num_threads())
            now[0] += cost.get(torch.get_num_threads(), 0.9)
            clock.on_train_batch_end(trainer, None, None, None, i)
    finally:
        torch.set_num_threads(before)
    assert clock.enough == 11 and trainer.should_stop is True
    # after the warm-up, 3 batches of each, then 3 more on the faster
    assert seen[2:] == [2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert clock.per_threads() == pytest.approx({2: 0.9, 1: 0.3})
    assert clock.best == 1 and clock.step_s() == pytest.approx(0.3)
