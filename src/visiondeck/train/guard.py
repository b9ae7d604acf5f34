"""Holding a time budget while training runs: re-plan after every epoch, stop at the end.

The throughput probe (`train.budget`) plans the epochs before training from a few batches;
the epochs themselves are better evidence. After every finished epoch `BudgetGuard` times
it (training, validation and checkpointing, end to end), estimates the next epoch from the
recent ones and re-plans how many epochs still fit in the time left. The learning-rate
schedule is laid over the re-planned total (`train.schedule.StretchedSchedule`), so it
always ends its anneal on the last epoch the budget allows: a machine that slows down gets
fewer epochs that still anneal, one that speeds up (or a probe that overestimated its first
batches) gets more. The guard stays the last safety: the run never starts an epoch that
would end more than `GUARD_TOLERANCE` of the budget past it.

The plan and every re-plan are kept in the guard's state, so they travel with each
checkpoint: a run resumed after a kill re-plans from its own time left, with the schedule
its checkpoint holds (`resume_callbacks`).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

__all__ = [
    "GUARD_TOLERANCE",
    "PLAN_MARGIN",
    "BudgetGuard",
    "resume_callbacks",
]

#: plan to end this share of the budget early: saving the model and the guard's slack
PLAN_MARGIN = 0.96
#: the guard lets the run end this share past the budget rather than drop a whole epoch
GUARD_TOLERANCE = 0.03
#: a run "held its budget" when it ended within this share past it
BUDGET_TOLERANCE = 0.10
#: the next epoch is estimated from at most this many recent epochs
RECENT_EPOCHS = 3

Clock = Callable[[], float]


class BudgetGuard(L.Callback):
    """Re-plans the epochs after each one and stops a run that would overrun its budget.

    `deadline` is absolute on `clock` (default `time.monotonic`), so the probe and start-up
    already spent count against it. `planned_epochs`: the probe's plan, re-planned after
    every epoch with the schedule stretched to match; None when the user fixed the epochs
    (then the guard only stops the run when another epoch as long as the longest so far
    would end past the tolerance). `epoch_steps` cuts every epoch to that many training
    batches (set before the optimiser's schedule is sized). `record`: written to
    RUN/auto.json when the fit starts (the probe's plan, the automatic choices), the
    budget's log merged into it when training ends.
    """

    def __init__(
        self,
        deadline: float,
        budget_s: float,
        tolerance: float = GUARD_TOLERANCE,
        epoch_steps: int | None = None,
        *,
        planned_epochs: int | None = None,
        margin: float = PLAN_MARGIN,
        clock: Clock | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        self.clock = clock or time.monotonic
        self.deadline = deadline
        self.budget_s = budget_s
        self.tolerance = tolerance
        self.margin = margin
        self.epoch_steps = epoch_steps
        self.planned_epochs = planned_epochs
        self.epochs = planned_epochs  # the current plan
        self.steps_per_epoch = 0.0  # optimiser steps per epoch (the schedule's unit)
        self.epoch_s: list[float] = []  # every epoch's seconds, end to end
        self.warm: list[bool] = []  # whether it was the first epoch of its process
        self.replans: list[dict[str, Any]] = []
        self.stopped_early = False
        self.record = record
        self.schedule: Any = None  # the StretchedSchedule, once the fit started
        self._mark: float | None = None
        self._first_here = True
        self._restored = False

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "left_s": self.deadline - self.clock(),
            "budget_s": self.budget_s,
            "tolerance": self.tolerance,
            "margin": self.margin,
            "epoch_steps": self.epoch_steps,
            "planned_epochs": self.planned_epochs,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch_s": list(self.epoch_s),
            "warm": list(self.warm),
            "replans": [dict(r) for r in self.replans],
            "stopped_early": self.stopped_early,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # the time left when the checkpoint was written: an epoch lost to a kill and the
        # restart are not charged (the budget is the run's own time)
        self.deadline = self.clock() + float(state.get("left_s", 0.0))
        self.epochs = state.get("epochs", self.epochs)
        self.steps_per_epoch = float(state.get("steps_per_epoch", 0.0))
        self.epoch_s = [float(s) for s in state.get("epoch_s", [])]
        self.warm = [bool(w) for w in state.get("warm", [False] * len(self.epoch_s))]
        self.replans = [dict(r) for r in state.get("replans", [])]
        self.stopped_early = bool(state.get("stopped_early", False))
        self._restored = True

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, clock: Clock | None = None) -> BudgetGuard | None:
        """The guard of a budgeted run's checkpoint (its state is loaded by Lightning on
        resume), or None when the run had no budget."""
        import torch

        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state = (checkpoint.get("callbacks") or {}).get(cls.__qualname__)
        if not state:
            return None
        return cls(
            0.0,
            float(state["budget_s"]),
            float(state.get("tolerance", GUARD_TOLERANCE)),
            state.get("epoch_steps"),
            planned_epochs=state.get("planned_epochs"),
            margin=float(state.get("margin", PLAN_MARGIN)),
            clock=clock,
        )

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.epoch_steps:
            trainer.limit_train_batches = self.epoch_steps

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Wrap the schedule the system built (before a resume restores its state) and set
        the epochs to the plan (a resumed run's plan comes from its checkpoint)."""
        if self.record is not None and trainer.is_global_zero:
            self._write(Path(trainer.default_root_dir), self.record)
        if self.planned_epochs is None:
            return
        self.schedule = self._stretch(trainer)
        trainer.fit_loop.max_epochs = self.epochs

    def _stretch(self, trainer: L.Trainer) -> Any:
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        from visiondeck.train.schedule import StretchedSchedule

        configs = trainer.lr_scheduler_configs
        if len(configs) != 1 or configs[0].interval != "step":
            return None  # no schedule, or one stepped per epoch (plateau)
        base = configs[0].scheduler
        if isinstance(base, ReduceLROnPlateau | StretchedSchedule):
            return base if isinstance(base, StretchedSchedule) else None
        # the steps it was built for: the system sized it from the epochs in the recipe
        built = int(getattr(base, "total_steps", 0) or trainer.estimated_stepping_batches)
        if not self.steps_per_epoch:
            self.steps_per_epoch = built / max(1, trainer.max_epochs or 1)
        configs[0].scheduler = StretchedSchedule(base, built)
        return configs[0].scheduler

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = self.clock()
        self._first_here = True
        if self.planned_epochs is not None and self._restored and trainer.current_epoch:
            # resumed: the plan of the checkpoint, re-made from this run's time left
            self._replan(trainer, trainer.current_epoch, self._mark)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._mark is None:
            self._mark = self.clock()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before the checkpoints are written (Lightning calls them last), so the
        # checkpoint of this epoch holds this re-plan and the schedule that follows it
        now = self.clock()
        self.epoch_s.append(round(now - (self._mark if self._mark is not None else now), 4))
        self.warm.append(self._first_here)
        self._mark, self._first_here = now, False
        done = trainer.current_epoch + 1
        if self.planned_epochs is not None:
            self._replan(trainer, done, now)
        elif self.would_overrun(now):
            self.stopped_early = done < (trainer.max_epochs or 0)
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._write(Path(trainer.default_root_dir), {})

    # ------------------------------------------------------------------ planning
    @property
    def longest_epoch(self) -> float:
        return max(self.epoch_s, default=0.0)

    def would_overrun(self, now: float) -> bool:
        """Another epoch as long as the longest so far would end past the tolerance."""
        return now + self.longest_epoch > self.deadline + self.tolerance * self.budget_s

    def estimate_s(self) -> float:
        """The next epoch's seconds: the median of the recent settled epochs, or the last
        epoch when it was longer (a slow-down counts at once, a speed-up once it holds).

        The first epoch of each process is not settled: it pays for warm-up (allocations,
        kernel tuning, caches) that later epochs do not, so it counts only while it is the
        last one measured.
        """
        if not self.epoch_s:
            return 0.0
        settled = [s for s, w in zip(self.epoch_s, self.warm, strict=True) if not w]
        recent = settled[-RECENT_EPOCHS:] or self.epoch_s[-1:]
        return max(statistics.median(recent), self.epoch_s[-1])

    def plan_total(self, done: int, now: float) -> int:
        """The epochs in all, `done` of them run, that fit in the time left at `now`.

        What fits before the plan's margin at the budget's end; when none does, one more
        still runs if it ends within the tolerance and the schedule has not ended yet, so
        its anneal is finished rather than cut. Epochs that took no measurable time (a
        clock that stood still) are no evidence: the plan stays.
        """
        estimate = self.estimate_s()
        if estimate <= 0:
            return max(done, self.epochs or done)
        left = self.deadline - (1 - self.margin) * self.budget_s - now
        more = int(max(0.0, left) // estimate)
        planned = self.epochs or done
        end = self.deadline + self.tolerance * self.budget_s
        if more == 0 and done < planned and now + estimate <= end:
            more = 1
        return done + more

    def _replan(self, trainer: L.Trainer, done: int, now: float) -> None:
        # every process must run the same epochs: rank zero's plan is the plan
        total = int(trainer.strategy.broadcast(self.plan_total(done, now), src=0))
        if total != self.epochs:
            self.replans.append({
                "epoch": done,
                "measured_s": round(self.estimate_s(), 3),
                "left_s": round(self.deadline - now, 2),
                "epochs": total,
            })
            if total <= done < (self.epochs or 0):
                self.stopped_early = True  # the schedule had more to run: cut
            self.epochs = total
            if self.schedule is not None:
                self.schedule.replan(round(total * self.steps_per_epoch))
        trainer.fit_loop.max_epochs = max(total, done)
        if total <= done:
            trainer.should_stop = True

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The budget's log: what ran against what was planned, and every re-plan."""
        elapsed = self.budget_s - (self.deadline - (self.clock() if now is None else now))
        return {
            "budget_s": self.budget_s,
            "elapsed_s": round(elapsed, 2),
            "within": elapsed <= self.budget_s * (1 + BUDGET_TOLERANCE),
            "stopped_early_by_guard": self.stopped_early,
            "epochs_planned": self.planned_epochs,
            "epochs": self.epochs,
            "epoch_s": list(self.epoch_s),
            "replans": [dict(r) for r in self.replans],
        }

    def _write(self, folder: Path, extra: dict[str, Any]) -> None:
        """Merge the budget's log (and `extra`) into RUN/auto.json."""
        from visiondeck._files import atomic_write_json

        path = folder / "auto.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        data = {**data, **extra}
        data["budget"] = {**(data.get("budget") or {}), **extra.get("budget", {}),
                          **self.summary()}
        atomic_write_json(path, data)


def resume_callbacks(checkpoint: str | Path, given: list | None = None) -> list:
    """What a resumed run needs besides `given`: its budget's guard when it had one."""
    if any(isinstance(c, BudgetGuard) for c in given or []):
        return []
    guard = BudgetGuard.from_checkpoint(checkpoint)
    return [guard] if guard is not None else []
