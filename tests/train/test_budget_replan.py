"""Re-planning a time budget after every epoch: a simulated machine that slows down or
speeds up mid-run changes the epochs, and the one-cycle schedule is stretched so that its
learning rate never jumps and still ends its anneal on the last epoch.

The runs are real (simple_cnn on tiny images); the clock is simulated: every training batch
and every validation batch of the real run advances it by a set cost, so the guard sees the
same seconds on every machine and no assertion depends on the wall clock.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.factories import crash_at_epoch, tiny_overrides, write_learnable
from visiondeck.config import load_recipe
from visiondeck.train.budget import Throughput, train_within
from visiondeck.train.guard import BudgetGuard
from visiondeck.train.runner import resume
from visiondeck.train.schedule import StretchedSchedule

LR = 0.01
STEPS = 3  # 24 training images, batches of 8
VAL_S = 0.5  # seconds per validation batch (2 batches)
BUDGET_S = 40.0
#: the probe's word: 3 steps of 1 s + 2 validation batches of 0.5 s = 4 s per epoch, so
#: 40 s × 0.96 buys 9 epochs
PROBE = Throughput(step_s=1.0, val_batch_s=VAL_S, steps_per_epoch=STEPS, val_batches=2,
                   setup_s=0.0, decode_s=0.0, probe_s=0.0)


# ------------------------------------------------------------ an independent one-cycle


def one_cycle(step: float, total: int, max_lr: float = LR) -> float:
    """torch's OneCycleLR as the system configures it (25 % warm-up, ÷20, ÷200, cosine),
    written out here at a fractional step."""
    initial = max_lr / 20.0
    low = initial / 200.0
    peak, end = 0.25 * total - 1, total - 1

    def anneal(start: float, stop: float, pct: float) -> float:
        return stop + (start - stop) / 2.0 * (math.cos(math.pi * pct) + 1)

    if step <= peak:
        return anneal(initial, max_lr, step / peak)
    return anneal(max_lr, low, (step - peak) / (end - peak))


def expected_rates(planned: int, replans: list[dict], steps: int) -> list[float]:
    """The rate of every real step: the schedule's progress kept at each re-plan and the
    rest of the built schedule (over `planned` epochs) spread over the steps left."""
    built = planned * STEPS
    end = built - 1
    anchor_step, anchor_at, total = 0, 0.0, built
    at_step = {r["epoch"] * STEPS: r["epochs"] * STEPS for r in replans}
    rates = []
    for step in range(steps):
        if step in at_step:
            anchor_at = _progress(step, anchor_step, anchor_at, total, end)
            anchor_step, total = step, at_step[step]
        rates.append(one_cycle(_progress(step, anchor_step, anchor_at, total, end), built))
    return rates


def _progress(step: int, anchor_step: int, anchor_at: float, total: int, end: int) -> float:
    if step >= total - 1:
        return float(end)
    return anchor_at + (step - anchor_step) / (total - 1 - anchor_step) * (end - anchor_at)


# ------------------------------------------------------------ the simulated machine


class Machine(L.Callback):
    """A clock that each real batch advances: `cost(epoch)` seconds per training step and
    VAL_S per validation batch. It also records the learning rate each step trained with."""

    def __init__(self, cost) -> None:
        self.now = 0.0
        self.cost = cost
        self.rates: list[float] = []

    def clock(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.now += self.cost(trainer.current_epoch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.now += VAL_S


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable(tmp_path_factory.mktemp("replan") / "data", per_class=16)


def _recipe(images: Path, runs: Path):
    return load_recipe(None, tiny_overrides(
        images, f"data.prepared={runs / 'prepared'}", f"output_dir={runs}", "name=replan",
        "train.batch_size=8", f"train.lr={LR}", "train.optimizer=sgd",
        "train.scheduler=onecycle", "train.epochs=40"))


def _run(images: Path, runs: Path, machine: Machine, *extra: L.Callback):
    return train_within(_recipe(images, runs), BUDGET_S, progress=False, throughput=PROBE,
                        clock=machine.clock, callbacks=[machine, *extra])


def _slows_down(epoch: int) -> float:
    return 1.0 if epoch < 3 else 3.0  # 4 s epochs, then 10 s from the fourth on


def test_a_slow_down_re_plans_fewer_epochs_that_still_anneal(images: Path, tmp_path: Path):
    machine = Machine(_slows_down)
    result, plan = _run(images, tmp_path / "runs", machine)
    assert plan.epochs == 9  # the probe's plan: 38.4 s // 4 s
    # after epoch 4 (22 s spent, the last epoch took 10 s) one more epoch fits: 5 in all
    auto = json.loads((result.run_dir / "auto.json").read_text())
    budget = auto["budget"]
    assert budget["plan"]["epochs"] == 9 and budget["epochs_planned"] == 9
    assert budget["replans"] == [{"epoch": 4, "measured_s": 10.0, "left_s": 18.0, "epochs": 5}]
    assert budget["epoch_s"] == [4.0, 4.0, 4.0, 10.0, 10.0]
    assert result.epochs_run == 5 and budget["epochs"] == 5
    assert budget["stopped_early_by_guard"] is False  # re-planned, not cut
    assert budget["elapsed_s"] == pytest.approx(32.0) and budget["within"] is True
    assert result.extra["budget"]["replans"] == budget["replans"]  # the CLI's report

    rates = machine.rates
    assert len(rates) == 5 * STEPS
    # the anneal ends on the very last step: the one-cycle's final rate, lr / 20 / 200
    assert rates[-1] == pytest.approx(LR / 4000, rel=1e-9)
    # up to the re-plan, exactly the one-cycle over the 9 planned epochs
    assert rates[:12] == pytest.approx([one_cycle(s, 27) for s in range(12)], rel=1e-9)
    # and over the whole run, the independently computed stretched one-cycle: no jump
    assert rates == pytest.approx(expected_rates(9, budget["replans"], 15), rel=1e-9)
    # where a guard-only run (the old behaviour) would have stopped at epoch 5 of 9 with
    # the rate still above a quarter of its peak
    assert one_cycle(15, 27) > LR / 4
    history = json.loads((result.run_dir / "history.json").read_text())
    assert history[-1]["lr"] == pytest.approx(LR / 4000, rel=1e-9)
    saved = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())
    assert saved["train"]["epochs"] == 5  # the epochs the run ended with


def _speeds_up(epoch: int) -> float:
    return 1.0 if epoch < 2 else 0.5  # 4 s epochs, then 2.5 s from the third on


def test_a_speed_up_re_plans_more_epochs(images: Path, tmp_path: Path) -> None:
    machine = Machine(_speeds_up)
    result, plan = _run(images, tmp_path / "runs", machine)
    auto = json.loads((result.run_dir / "auto.json").read_text())
    replans = auto["budget"]["replans"]
    # epoch 3: median of the settled epochs (4, 2.5) → 27.9 s left buys 8 more; epoch 4:
    # 2.5 s per epoch holds → 25.4 s buys 10 more
    assert [(r["epoch"], r["measured_s"], r["epochs"]) for r in replans] == [
        (3, 3.25, 11), (4, 2.5, 14)]
    assert plan.epochs == 9 and result.epochs_run == 14
    assert auto["budget"]["elapsed_s"] == pytest.approx(38.0)  # of 40 s: the budget used
    rates = machine.rates
    assert rates == pytest.approx(expected_rates(9, replans, 14 * STEPS), rel=1e-9)
    assert rates[-1] == pytest.approx(LR / 4000, rel=1e-9)
    # continuity at each re-plan: the step after it trains at the rate the old plan gave it
    for r in replans:
        step = r["epoch"] * STEPS
        before = expected_rates(9, [x for x in replans if x["epoch"] < r["epoch"]], step + 1)
        assert rates[step] == pytest.approx(before[step], rel=1e-9)


def test_a_run_killed_and_resumed_re_plans_from_its_own_time_left(
        images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`visiondeck train --resume` passes no guard: the budget's comes from the checkpoint
    (before, a resumed run dropped its budget, and an epoch cut by the plan ran whole)."""
    reference = Machine(_slows_down)
    ref_result, _ = _run(images, tmp_path / "ref", reference)

    machine = Machine(_slows_down)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(images, tmp_path / "runs", machine, crash_at_epoch(3))  # 3 epochs checkpointed
    run = tmp_path / "runs" / "replan"
    guard = BudgetGuard.from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert guard is not None and (guard.planned_epochs, guard.budget_s) == (9, BUDGET_S)
    machine.now += 500.0  # the time between the kill and the restart is not charged
    # the guard `resume` builds reads the process's monotonic clock: the simulated one
    monkeypatch.setattr(time, "monotonic", machine.clock)
    resumed = resume(run, progress=False, callbacks=[machine])

    auto = json.loads((run / "auto.json").read_text())
    ref_auto = json.loads((ref_result.run_dir / "auto.json").read_text())
    # the resumed run re-planned exactly as the uninterrupted one: the same epoch, the same
    # measurement, the same time left, the same new total
    assert auto["budget"]["replans"] == ref_auto["budget"]["replans"] != []
    assert auto["budget"]["plan"] == ref_auto["budget"]["plan"]  # written at the fit's start
    assert auto["budget"]["epoch_s"] == ref_auto["budget"]["epoch_s"]
    assert resumed.epochs_run == ref_result.epochs_run == 5
    # the schedule it resumed is the one its checkpoint held: the same rates, step by step
    assert machine.rates == pytest.approx(reference.rates, rel=1e-12)
    assert machine.rates[-1] == pytest.approx(LR / 4000, rel=1e-9)


def test_a_resumed_run_keeps_the_epochs_its_plan_cut(
        images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """14 s buy 4 epochs cut to 2 of their 3 steps. Before, a resumed run lost the cut (the
    guard that set it was not there) and its one-cycle, restored for 8 steps, raised on the
    ninth; now the checkpoint's guard cuts them again and the schedule ends on step 8."""
    machine = Machine(lambda epoch: 1.0)  # 2 steps + 2 validation batches: 3 s per epoch
    recipe = _recipe(images, tmp_path / "runs")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_within(recipe, 14.0, progress=False, throughput=PROBE, clock=machine.clock,
                     callbacks=[machine, crash_at_epoch(2)])
    run = tmp_path / "runs" / "replan"
    monkeypatch.setattr(time, "monotonic", machine.clock)
    resumed = resume(run, progress=False, callbacks=[machine])
    history = json.loads((run / "history.json").read_text())
    assert [row["step"] for row in history] == [2, 4, 6, 8] and resumed.epochs_run == 4
    budget = json.loads((run / "auto.json").read_text())["budget"]
    assert budget["plan"]["epoch_steps"] == 2 and budget["replans"] == []
    assert machine.rates == pytest.approx([one_cycle(s, 8) for s in range(8)], rel=1e-9)
    assert history[-1]["lr"] == pytest.approx(LR / 4000, rel=1e-9)


# ------------------------------------------------------------ the schedule on its own


def _sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR, momentum=0.9)


def _one_cycle(optimizer: torch.optim.Optimizer, total: int):
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=total, pct_start=0.25, div_factor=20.0,
        final_div_factor=200.0)


def _rates(optimizer: torch.optim.Optimizer, schedule, steps: int) -> list[tuple[float, float]]:
    seen = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["momentum"]))
        optimizer.step()
        schedule.step()
    return seen


def test_without_a_re_plan_the_stretched_schedule_is_the_built_one_exactly() -> None:
    plain_opt, stretched_opt = _sgd(), _sgd()
    plain = _one_cycle(plain_opt, 40)
    stretched = StretchedSchedule(_one_cycle(stretched_opt, 40), 40)
    # rate and the one-cycle's momentum, bit for bit
    assert _rates(stretched_opt, stretched, 40) == _rates(plain_opt, plain, 40)


def test_a_re_plan_keeps_the_rate_and_a_checkpoint_keeps_the_plan() -> None:
    optimizer = _sgd()
    schedule = StretchedSchedule(_one_cycle(optimizer, 40), 40)
    seen = _rates(optimizer, schedule, 16)
    rate_before = optimizer.param_groups[0]["lr"]
    schedule.replan(22)  # slowed down: 6 steps left instead of 24
    assert optimizer.param_groups[0]["lr"] == rate_before  # nothing jumps at the re-plan
    seen += _rates(optimizer, schedule, 2)
    # saved and restored mid-run (weights-only, like every checkpoint), then continued
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    restored_opt = _sgd()  # in Lightning's order: built, then the optimiser, then this
    restored = StretchedSchedule(_one_cycle(restored_opt, 40), 40)
    restored_opt.load_state_dict(optimizer.state_dict())
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    seen += _rates(restored_opt, restored, 4)
    rates = [lr for lr, _ in seen]
    assert rates == pytest.approx(_stretched_reference(40, 16, 22), rel=1e-9)
    assert rates[-1] == pytest.approx(LR / 4000, rel=1e-9)
    assert seen[-1][1] == pytest.approx(0.95)  # the momentum ends its cycle too


def _stretched_reference(built: int, at: int, total: int) -> list[float]:
    """One-cycle over `built` steps until step `at`, the rest spread over `total - at`."""
    end = built - 1
    rates = [one_cycle(s, built) for s in range(at)]
    rates += [one_cycle(at + (s - at) / (total - 1 - at) * (end - at), built)
              for s in range(at, total)]
    return rates


def test_the_estimate_leaves_out_a_warm_up_epoch_once_others_ran() -> None:
    guard = BudgetGuard(100.0, 100.0, planned_epochs=10)
    guard.epoch_s, guard.warm = [9.0], [True]
    assert guard.estimate_s() == 9.0  # the only evidence yet
    guard.epoch_s, guard.warm = [9.0, 4.0, 4.2], [True, False, False]
    assert guard.estimate_s() == pytest.approx(4.2)  # median 4.1, the last was longer
    guard.epoch_s, guard.warm = [9.0, 4.0, 4.2, 3.0], [True, False, False, False]
    assert guard.estimate_s() == pytest.approx(4.0)  # one fast epoch is not yet a trend
    # a resumed process's first epoch counts while it is the last one measured
    guard.epoch_s, guard.warm = [4.0, 4.0, 4.0, 10.0], [True, False, False, True]
    assert guard.estimate_s() == 10.0


def test_a_cosine_schedule_is_stretched_to_its_own_last_value() -> None:
    from visiondeck.train.module import _cosine

    built, warmup = 30, 5
    plain_opt, optimizer = _sgd(), _sgd()
    plain = torch.optim.lr_scheduler.LambdaLR(plain_opt, _cosine(built, warmup))
    schedule = StretchedSchedule(
        torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(built, warmup)), built)
    reference = [lr for lr, _ in _rates(plain_opt, plain, built)]
    seen = [lr for lr, _ in _rates(optimizer, schedule, 10)]
    assert seen == reference[:10]  # the warm-up and the start of the decay, unchanged
    schedule.replan(48)  # sped up: 38 steps left instead of 20
    seen += [lr for lr, _ in _rates(optimizer, schedule, 38)]
    assert seen[10] == reference[10]  # no jump at the re-plan
    assert seen[-1] == pytest.approx(reference[-1], rel=1e-12)  # the same final rate
    assert all(b <= a for a, b in itertools.pairwise(seen[10:]))  # still decaying


def test_a_run_without_a_budget_keeps_its_plain_schedule(images: Path, tmp_path: Path) -> None:
    from visiondeck.train.runner import train

    recipe = _recipe(images, tmp_path / "runs")
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 3})})
    result = train(recipe, progress=False)
    state = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert "BudgetGuard" not in state["callbacks"]
    schedule = state["lr_schedulers"][0]
    assert "base" not in schedule and schedule["total_steps"] == 3 * STEPS  # torch's own
    assert not (result.run_dir / "auto.json").exists()
    assert BudgetGuard.from_checkpoint(result.run_dir / "checkpoints" / "last.ckpt") is None
