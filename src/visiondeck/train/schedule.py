"""A learning-rate schedule whose length may change while it runs.

A budgeted run re-plans its number of epochs after every epoch (`train.guard`), but the
one-cycle or cosine schedule was built for the first plan's steps: cut short, it never
anneals; stretched by hand, its learning rate jumps. `StretchedSchedule` drives the very
schedule the system built by its *progress* instead of its step count. At a re-plan the
progress reached so far is kept and the rest of the schedule is spread over the steps now
left, so the learning rate never jumps (only its pace changes) and the schedule reaches its
final value on the last planned step, whatever the total became.

Without a re-plan it steps the built schedule exactly as it would step itself.
"""

from __future__ import annotations

from typing import Any

from torch.optim.lr_scheduler import LRScheduler

__all__ = ["StretchedSchedule"]


class StretchedSchedule(LRScheduler):
    """Steps `base` (built for `total_steps` steps) at a virtual, fractional step.

    The virtual step runs from 0 to `total_steps - 1` (the built schedule's last step)
    while the real steps run from 0 to `planned - 1`; `replan` changes `planned` and keeps
    the virtual step reached so far. `base` computes every value itself (learning rate and,
    for one-cycle, momentum), so the shape of the schedule has one home: the system.
    """

    def __init__(self, base: LRScheduler, total_steps: int) -> None:
        # no LRScheduler.__init__: `base` already set the optimiser's initial rates and
        # wrapped its step; this only decides at which step `base` is evaluated
        self.base = base
        self.optimizer = base.optimizer
        self.base_lrs = list(base.base_lrs)
        self.base_total = max(1, int(total_steps))
        self.planned = self.base_total
        self.anchor_step = 0  # the real step of the last re-plan
        self.anchor_at = 0.0  # the virtual step reached there
        self.last_epoch = int(base.last_epoch)  # real steps taken (Lightning's count)
        self._step_count = base._step_count
        self._last_lr = base.get_last_lr()

    def virtual(self, step: int) -> float:
        """The built schedule's step that real step `step` stands for."""
        end = self.base_total - 1
        span = self.planned - 1 - self.anchor_step
        if span <= 0 or step >= self.planned - 1:
            return float(end)
        # multiply first: without a re-plan this is step × end / end, exactly `step`
        return self.anchor_at + (step - self.anchor_step) * (end - self.anchor_at) / span

    def replan(self, total_steps: int) -> None:
        """Lay what is left of the schedule over `total_steps` real steps in all.

        The step about to run keeps the value it had (continuity); the steps after it move
        through the rest of the schedule at the new pace.
        """
        self.anchor_at = self.virtual(self.last_epoch)
        self.anchor_step = self.last_epoch
        self.planned = max(int(total_steps), self.last_epoch + 1)

    def step(self, epoch: int | None = None) -> None:
        self.last_epoch += 1
        self._step_count += 1
        # `base.step()` adds one to its own counter and evaluates itself there
        self.base.last_epoch = self.virtual(self.last_epoch) - 1
        self.base.step()
        self._last_lr = self.base.get_last_lr()

    def get_lr(self) -> list[Any]:
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {
            "base": self.base.state_dict(),
            "base_total": self.base_total,
            "planned": self.planned,
            "anchor_step": self.anchor_step,
            "anchor_at": self.anchor_at,
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "_last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "base" not in state_dict:
            # a checkpoint written by the plain schedule (before the budget re-planned):
            # nothing was stretched yet, the real and virtual steps are the same
            self.base.load_state_dict(state_dict)
            self.planned, self.anchor_step, self.anchor_at = self.base_total, 0, 0.0
            self.last_epoch = int(state_dict["last_epoch"])
            self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
            self._last_lr = self.base.get_last_lr()
            return
        self.base.load_state_dict(state_dict["base"])
        self.base_total = int(state_dict["base_total"])
        self.planned = int(state_dict["planned"])
        self.anchor_step = int(state_dict["anchor_step"])
        self.anchor_at = float(state_dict["anchor_at"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["_step_count"])
        self._last_lr = list(state_dict["_last_lr"])
