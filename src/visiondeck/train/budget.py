"""Training within a time budget: `--time 10m` means the run ends within ten minutes.

A fixed epoch count is not a budget: the same recipe takes twice as long on a busy machine.
Here a short throughput probe (a few real training and validation batches of the very
recipe, on its real data path) measures the seconds per step and per validation batch; the
first plan is the number of epochs that fits in the time left, validation included. That
plan is only a start: `BudgetGuard` (`train.guard`) re-plans after every epoch from the
epochs' own measured times and lays the one-cycle (or cosine) schedule over the re-planned
total, so the learning rate anneals at the budget's end whether the machine slows down or
speeds up mid-run, and it stops the run cleanly at an epoch's end when even that would
overrun, so the best checkpoint and every artefact are still written.

The budget covers the probe, the fit (training and validation) and writing the model; it
does not cover checking, splitting and decoding the data into memory, which happen once and
are reused (the decoded arrays are cached on disk).
"""
from __future__ import annotations

import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from visiondeck.config import Recipe, save_recipe
from visiondeck.errors import ConfigError
from visiondeck.train.guard import GUARD_TOLERANCE, PLAN_MARGIN, BudgetGuard, Clock

if TYPE_CHECKING:
    from visiondeck.train.runner import RunResult
    from visiondeck.train.tracking import Tracker

__all__ = [
    "GUARD_TOLERANCE",
    "PLAN_MARGIN",
    "BudgetGuard",
    "BudgetPlan",
    "Throughput",
    "measure_throughput",
    "parse_duration",
    "plan_epochs",
    "train_within",
]

#: the probe's training batches stop after this share of the budget (once enough ran)
PROBE_SHARE = 0.03
#: fewer whole epochs than this fit: this many shorter ones instead (see `plan_epochs`)
MIN_EPOCHS = 4
#: whole epochs leave more than this share of the budget unused: one more, shorter, epoch
FILL_SLACK = 0.03
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|min|m|sec|s)?", re.IGNORECASE)


def parse_duration(text: str | float | int) -> float:
    """Seconds in `10m`, `90s`, `1h30m`, `1.5m` or a plain number of seconds."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        spec = text.strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        while pos < len(spec):
            match = _PART.match(spec, pos)
            if match is None:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2) or "s"]
            pos = match.end()
        if not spec or pos != len(spec):
            raise ConfigError(
                f"cannot read the time budget {text!r}",
                hint="write e.g. --time 10m, --time 90s or --time 1h30m",
            )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"the time budget must be positive, not {text!r}")
    return seconds


@dataclass(frozen=True)
class Throughput:
    """What the probe measured (seconds) on the recipe's own data and network."""

    step_s: float  # one training step, data and augmentation included
    val_batch_s: float  # one validation batch
    steps_per_epoch: int
    val_batches: int
    setup_s: float  # the fit's start-up before its first batch, decoding excluded
    decode_s: float  # decoding the split into memory (a later run reads the cache)
    probe_s: float  # the probe's own wall time
    threads: int = 0  # CPU threads the run uses (0: left as torch set them, e.g. on a GPU)
    threads_tried: dict[int, float] | None = None  # threads → seconds per step measured

    @property
    def epoch_s(self) -> float:
        return self.steps_per_epoch * self.step_s + self.val_batches * self.val_batch_s


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float
    epochs: int
    epoch_steps: int | None  # set when epochs are cut (to fill the budget, or to fit it)
    predicted_s: float  # probe + start-up + the planned epochs
    throughput: Throughput

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput"]["epoch_s"] = round(self.throughput.epoch_s, 3)
        return data


def plan_epochs(
    budget_s: float, throughput: Throughput, *, spent_s: float = 0.0, margin: float = PLAN_MARGIN
) -> BudgetPlan:
    """The most epochs that fit in what is left of the budget, filling it.

    `spent_s`: budget already used (the probe). The fit's start-up and a re-read of the
    decoded cache are charged first. When whole epochs would leave more than `FILL_SLACK`
    of the budget unused (a 2-minute budget of 20-second epochs), the run is one more
    epoch, each cut to the batches that fill the time: a budget is for training, not for
    waiting. When fewer than `MIN_EPOCHS` whole epochs fit, the run is `MIN_EPOCHS`
    shorter epochs of `epoch_steps` batches each (each a fresh shuffle's first batches),
    each validated: the guard can still act between them and the best one is kept. When
    not even that fits, one epoch cut to the steps that do.
    """
    # the real fit re-reads the decoded arrays from the disk cache: a fraction of decoding
    overhead = throughput.setup_s + min(0.25 * throughput.decode_s, 0.05 * budget_s)
    left = max(0.0, budget_s * margin - spent_s - overhead)
    epochs = int(left // max(throughput.epoch_s, 1e-9))
    val = throughput.val_batches * throughput.val_batch_s
    step = max(throughput.step_s, 1e-9)
    epoch_steps = None
    if epochs >= MIN_EPOCHS:
        fit_s = epochs * throughput.epoch_s
        if left - fit_s > FILL_SLACK * budget_s:
            # 5 whole epochs of 20 s in 110 s leave 10 s unused: 6 epochs of 18 s fill it
            more = epochs + 1
            steps = min(throughput.steps_per_epoch, int((left - more * val) // (more * step)))
            if more * (steps * throughput.step_s + val) > fit_s:  # coarse steps may not
                epochs, epoch_steps = more, steps
                fit_s = epochs * (epoch_steps * throughput.step_s + val)
    else:
        steps = int((left - MIN_EPOCHS * val) // step)
        if steps >= MIN_EPOCHS:
            epochs = MIN_EPOCHS
            epoch_steps = min(throughput.steps_per_epoch, steps // MIN_EPOCHS)
        else:
            epochs = 1
            epoch_steps = min(throughput.steps_per_epoch, max(1, int((left - val) // step)))
        fit_s = epochs * (epoch_steps * throughput.step_s + val)
    return BudgetPlan(
        budget_s, epochs, epoch_steps, round(spent_s + overhead + fit_s, 2), throughput
    )


class _Clock(L.Callback):
    """Times batches from one batch's end to the next (data loading included).

    After `warmup` batches it times `trial` batches with each thread count of `threads` in
    turn (a CPU shared with other work can run a small network several times faster on one
    thread than on two fighting for the cores), switches to the fastest, times `confirm`
    more batches on it (the first batches after a switch run slow), and ends the probe's
    training once all that ran and `cap_s` is spent — or, when steps are slow, once one
    batch ran on the kept count and three times `cap_s` is spent.
    """

    def __init__(
        self, cap_s: float, warmup: int, trial: int, threads: list[int], confirm: int = 3
    ) -> None:
        self.cap_s = cap_s
        self.warmup = warmup
        self.trial = trial
        self.threads = threads
        self.confirm = confirm
        self.best = 0
        self.fit_start = 0.0
        self.first_batch = 0.0
        self.train: list[float] = []
        self.train_threads: list[int] = []
        self.val: list[float] = []
        self._last_train = 0.0
        self._last_val = 0.0

    @property
    def trials(self) -> int:
        return self.trial * len(self.threads)

    @property
    def enough(self) -> int:
        return self.warmup + self.trials + self.confirm

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.first_batch:
            self.first_batch = time.perf_counter()
        if batch_idx == 0:
            self._last_train = time.perf_counter()
        done = len(self.train) - self.warmup
        if not self.threads or done < 0:
            return
        if done < self.trials and done % self.trial == 0:
            torch.set_num_threads(self.threads[done // self.trial])
        elif done == self.trials:
            tried = self.per_threads()
            self.best = min(tried, key=tried.get)
            torch.set_num_threads(self.best)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.train.append(now - self._last_train)
        self.train_threads.append(torch.get_num_threads())
        self._last_train = now
        spent = now - self.first_batch
        settled = len(self.train) > self.warmup + self.trials  # a step on the kept count
        if (len(self.train) >= self.enough and spent > self.cap_s) or (
            settled and spent > 3 * self.cap_s  # slow steps: fewer confirming batches
        ):
            trainer.should_stop = True

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0:
            self._last_val = time.perf_counter()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        now = time.perf_counter()
        self.val.append(now - self._last_val)
        self._last_val = now

    def per_threads(self) -> dict[int, float]:
        """Mean seconds per step of each thread count's trial batches."""
        times: dict[int, list[float]] = {}
        trial = slice(self.warmup, self.warmup + self.trials)
        for seconds, threads in zip(self.train[trial], self.train_threads[trial], strict=True):
            times.setdefault(threads, []).append(seconds)
        return {k: sum(v) / len(v) for k, v in times.items()}

    def step_s(self) -> float:
        """Seconds per step on the settled thread count: the batches after the trials."""
        kept = self.train[self.warmup + self.trials :]
        return sum(kept) / len(kept) if kept else _typical(self.train, self.warmup)


def _typical(values: list[float], warmup: int) -> float:
    """Mean after the warm-up batches (first calls allocate and tune kernels)."""
    kept = values[warmup:] or values
    return sum(kept) / len(kept) if kept else 0.0


def thread_counts(accelerator: str) -> list[int]:
    """The CPU thread counts worth trying: one, then torch's own (none on a GPU). One goes
    first: on a busy machine torch's own can cost ten times more per batch, and it is then
    tried for a single batch."""
    if accelerator in ("gpu", "mps") or (accelerator == "auto" and torch.cuda.is_available()):
        return []
    own = torch.get_num_threads()
    return [1, own] if own > 1 else []


def measure_throughput(
    recipe: Recipe,
    *,
    steps: int = 10,
    val_steps: int = 3,
    warmup: int = 2,
    cap_s: float = 10.0,
    progress: bool = False,
    split: Any = None,
) -> Throughput:
    """Run a few real training and validation batches of `recipe` and time them.

    On a CPU, a single thread and torch's thread count are tried in turn (a batch each)
    and the faster is kept for the rest of the process (`Throughput.threads`); the step time
    is measured on it afterwards. At most
    `warmup + steps` training batches, fewer once the trials ran and `cap_s` seconds went
    by, then `warmup + val_steps` validation batches. `split`: a `SplitOutcome` of this
    recipe's data prepared just before (else the data is checked and split here).
    """
    from visiondeck.train.runner import build_system
    from visiondeck.train.trainer import resolve_precision

    started = time.perf_counter()
    threads = thread_counts(recipe.train.accelerator)
    if recipe.train.freeze != "none":
        # a frozen backbone makes the first epochs cheaper than the later ones, where it
        # trains too: time the fully trained network, the epochs the budget must hold
        recipe = recipe.model_copy(
            update={"train": recipe.train.model_copy(update={"freeze": "none"})}
        )
    with tempfile.TemporaryDirectory(prefix="visiondeck-probe-") as scratch:
        built = build_system(recipe, Path(scratch), progress=progress, split=split)
        data = built.data
        decode_start = time.perf_counter()
        data.setup("fit")
        decode_s = time.perf_counter() - decode_start
        steps_per_epoch = len(data.train_dataloader())
        val_batches = len(data.val_dataloader())
        clock = _Clock(cap_s, warmup, 1, threads)
        trainer = L.Trainer(
            default_root_dir=scratch,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_train_batches=min(steps_per_epoch, max(warmup + steps, clock.enough)),
            limit_val_batches=0,
            limit_test_batches=0,
            accelerator=recipe.train.accelerator,
            devices=1,
            precision=resolve_precision(recipe.train),
            callbacks=[clock],
        )
        trainer.fit(built.system, datamodule=data)
        tried = clock.per_threads() if threads else {}
        best = clock.best or (min(tried, key=tried.get) if tried else 0)
        if best:
            torch.set_num_threads(best)
        trainer.limit_val_batches = min(val_batches, warmup + val_steps)
        trainer.validate(built.system, datamodule=data, verbose=False)
    step_s = clock.step_s()
    return Throughput(
        step_s=round(step_s, 5),
        val_batch_s=round(_typical(clock.val, warmup), 5),
        steps_per_epoch=steps_per_epoch // max(1, recipe.train.accumulate) or 1,
        val_batches=val_batches,
        setup_s=round(max(0.0, clock.first_batch - clock.fit_start), 3),
        decode_s=round(decode_s, 3),
        probe_s=round(time.perf_counter() - started, 3),
        threads=best,
        threads_tried={k: round(v, 5) for k, v in tried.items()} or None,
    )


def train_within(
    recipe: Recipe,
    budget_s: float,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
    tracker: Tracker | None = None,
    force: bool = False,
    keep_epochs: bool = False,
    notes: dict[str, Any] | None = None,
    on_plan: Any = None,
    split: Any = None,
    throughput: Throughput | None = None,
    clock: Clock | None = None,
    callbacks: list | None = None,
) -> tuple[RunResult, BudgetPlan | None]:
    """Train `recipe` so that probe + training + validation end within `budget_s`.

    `keep_epochs`: the user fixed train.epochs; the guard alone holds the budget (no
    re-plan). The plan, every re-plan and `notes` (e.g. the automatic choices) are written
    to RUN/auto.json; `on_plan` is called with the plan before the real training starts
    (the CLI prints it). `split`: the `SplitOutcome` of this recipe's data when it was just
    prepared (`AutoPlan.split`). `throughput`: one measured before (no probe is run);
    `clock`: the seconds the budget is held on (`time.monotonic`; tests simulate one);
    `callbacks`: more Lightning callbacks for the fit.
    """
    from visiondeck._files import atomic_write_json
    from visiondeck.data.prepare import prepare_split
    from visiondeck.train.runner import train

    clock = clock or time.monotonic
    # checking and splitting happen once, before the clock starts, and are not done again
    outcome = split or prepare_split(recipe.data, force=force, progress=progress)
    deadline = clock() + budget_s
    threads_before = torch.get_num_threads()
    plan = None
    if not keep_epochs:
        if throughput is None:
            throughput = measure_throughput(recipe, cap_s=PROBE_SHARE * budget_s, split=outcome)
        # decoding the images into memory is data preparation, done once and cached (like
        # checking and splitting): the budget's clock starts after it
        deadline += throughput.decode_s
        spent = budget_s - (deadline - clock())
        plan = plan_epochs(budget_s, throughput, spent_s=spent)
        recipe = recipe.model_copy(
            update={"train": recipe.train.model_copy(update={"epochs": plan.epochs})}
        )
    if on_plan is not None:
        on_plan(plan, recipe)
    record = {**(notes or {}), "budget": {"plan": plan.to_json() if plan else None}}
    guard = BudgetGuard(
        deadline,
        budget_s,
        epoch_steps=plan.epoch_steps if plan else None,
        planned_epochs=plan.epochs if plan else None,
        clock=clock,
        record=record,
    )
    try:  # on the thread count the probe found fastest (set by measure_throughput)
        result = train(
            recipe,
            run_dir=run_dir,
            progress=progress,
            tracker=tracker,
            callbacks=[guard, *(callbacks or [])],
            split=outcome,
        )
    finally:
        torch.set_num_threads(threads_before)
    budget = guard.summary()
    if result.run_dir.is_dir() and result.status != "worker":
        atomic_write_json(
            result.run_dir / "auto.json",
            {**record, "budget": {**budget, "plan": record["budget"]["plan"]}},
        )
        if plan is not None and result.epochs_run != plan.epochs:
            # re-planned: the recipe names the epochs the run ended with (its schedule was
            # stretched at each re-plan listed in auto.json)
            ran = recipe.train.model_copy(update={"epochs": max(1, result.epochs_run)})
            save_recipe(recipe.model_copy(update={"train": ran}), result.run_dir / "recipe.yaml")
    result.extra["budget"] = budget
    return result, plan
