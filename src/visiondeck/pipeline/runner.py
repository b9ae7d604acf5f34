"""`run_pipeline(recipe)`: check → split → train → evaluate → export → register → promote.

Each step runs only when the hash of its inputs differs from the one recorded in the state
file, or its outputs went missing or changed on disk; otherwise it is skipped and its
recorded outputs feed the next step. A step that fails is recorded as failed, the steps
after it are not run, and `PipelineFailed` carries the partial result; the next run skips
everything that finished and starts at the failed step (training continues a killed run
from its last checkpoint). `step_check` ... `step_promote` run one step with the same rules,
which is how the Airflow DAG drives the pipeline one task per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondeck.config import Recipe, apply_overrides, load_recipe, parse_overrides
from visiondeck.errors import ConfigError, VisionDeckError
from visiondeck.pipeline.state import (
    PipelineError,
    PipelineState,
    StepRecord,
    hash_json,
    pipeline_lock,
)
from visiondeck.pipeline.steps import STEP_NAMES, STEPS, Context, Step, model_name, tracking_on

__all__ = [
    "PipelineFailed",
    "PipelineResult",
    "StepReport",
    "resolve_recipe",
    "run_pipeline",
    "run_step",
    "state_dir",
    "step_check",
    "step_evaluate",
    "step_export",
    "step_promote",
    "step_register",
    "step_split",
    "step_train",
]

RecipeLike = Recipe | str | Path | None  # None: the defaults plus the overrides
OnStep = Callable[["StepReport"], None]


@dataclass
class StepReport:
    """What one step did in this invocation.

    status: "ran", "skipped" (inputs unchanged, outputs intact), "failed", "refused" (a
    registry policy said no: failed quality gate, or not better than the champion), "off"
    (nothing to do: tracking disabled, nothing registered), "not run" (after a failure),
    "not selected" (outside --only/--from), or "running" (only in the start callback).
    """

    name: str
    status: str
    duration_s: float = 0.0
    key: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status,
                "duration_s": round(self.duration_s, 3), "key": self.key,
                "outputs": self.outputs, "error": self.error}


@dataclass
class PipelineResult:
    """Every step's report in pipeline order, and where the state lives."""

    recipe: Recipe
    state_file: Path
    steps: list[StepReport]
    duration_s: float

    def step(self, name: str) -> StepReport:
        for report in self.steps:
            if report.name == name:
                return report
        raise KeyError(name)

    @property
    def failed(self) -> StepReport | None:
        return next((r for r in self.steps if r.status == "failed"), None)

    def _output(self, step: str, key: str) -> Any:
        try:
            return self.step(step).outputs.get(key)
        except KeyError:
            return None

    @property
    def run_dir(self) -> Path | None:
        value = self._output("train", "run_dir")
        return Path(value) if value else None

    @property
    def bundle(self) -> Path | None:
        value = self._output("export", "bundle")
        return Path(value) if value else None

    @property
    def version(self) -> str | None:
        return self._output("register", "version")

    @property
    def promoted(self) -> bool:
        return bool(self._output("promote", "promoted"))

    @property
    def gate_passed(self) -> bool | None:
        """The training run's quality gate: True, False, or None when none was set."""
        return self._output("train", "gate_passed")


class PipelineFailed(VisionDeckError):
    """A step raised; `result` holds every step's report, `step` the one that failed.

    The exit code is the cause's (4 for data, 5 for training, 7 for export...), so scripts
    can tell what broke; the earlier steps are recorded and will be skipped next time.
    """

    def __init__(self, result: PipelineResult, step: str, cause: BaseException) -> None:
        message = getattr(cause, "message", None) or f"{type(cause).__name__}: {cause}"
        hint = getattr(cause, "hint", None)
        resume = "run the pipeline again: finished steps are skipped and it resumes here"
        super().__init__(f"pipeline step {step!r} failed: {message}",
                         hint=f"{hint}; then {resume}" if hint else f"fix the cause, then "
                                                                    f"{resume}")
        self.result = result
        self.step = step
        self.exit_code = int(getattr(cause, "exit_code", 1))


# ------------------------------------------------------------------------------ running


def resolve_recipe(recipe: RecipeLike, overrides: Sequence[str] = ()) -> Recipe:
    """A Recipe from a Recipe or a YAML path, with `key=value` overrides applied."""
    if not isinstance(recipe, Recipe):
        return load_recipe(recipe, overrides)
    if not overrides:
        return recipe
    from pydantic import ValidationError

    raw = apply_overrides(recipe.model_dump(mode="json"), parse_overrides(overrides))
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid override: {exc.errors()[0]['msg']}",
                          hint="`visiondeck config defaults` lists every key") from None


def state_dir(recipe: Recipe) -> Path:
    """`<output_dir>/pipeline/<recipe name>/`: state.json and the lock."""
    return Path(recipe.output_dir) / "pipeline" / recipe.name


def run_pipeline(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
                 steps: Sequence[str] | None = None, progress: bool = True,
                 on_step: OnStep | None = None, budget_s: float | None = None,
                 notes: dict[str, Any] | None = None) -> PipelineResult:
    """Run the pipeline for a recipe; skip what is unchanged, resume what failed.

    `force` re-runs every selected step (and lets the split step replace a split whose data
    changed). `steps` limits the run to these step names (their upstream steps must have
    finished before). `on_step` is called when each step starts (status "running") and ends.
    `budget_s` trains within that many seconds (`train.budget`); `notes` (the automatic
    recipe's choices) are saved beside such a run.
    Raises `PipelineFailed` when a step fails, after recording it.
    """
    resolved = resolve_recipe(recipe, overrides)
    selected = _select(steps)
    if "register" in selected and tracking_on(resolved):
        from visiondeck.registry.names import check_model_name

        # the model is registered under the recipe's name: a name the registry refuses
        # fails now, not after the training
        check_model_name(model_name(resolved))
    folder = state_dir(resolved)
    started = time.perf_counter()
    reports: list[StepReport] = []
    with pipeline_lock(folder):
        state = PipelineState.load(folder / "state.json", resolved.name)
        ctx = Context(resolved, state, force=force, progress=progress, budget_s=budget_s,
                      notes=notes)
        failure: tuple[str, BaseException] | None = None
        for step in STEPS:
            if failure is not None:
                reports.append(StepReport(step.name, "not run"))
            elif step.name not in selected:
                recorded = state.get(step.name)
                reports.append(StepReport(step.name, "not selected",
                                          key=recorded.key if recorded else "",
                                          outputs=recorded.outputs if recorded else {}))
            else:
                report, error = _execute(step, ctx, on_step)
                reports.append(report)
                if error is not None:
                    failure = (step.name, error)
    result = PipelineResult(resolved, folder / "state.json", reports,
                            time.perf_counter() - started)
    if failure is not None:
        raise PipelineFailed(result, *failure) from failure[1]
    return result


def run_step(name: str, recipe: RecipeLike, *, overrides: Sequence[str] = (),
             force: bool = False, progress: bool = False) -> StepReport:
    """Run (or skip) one step with the pipeline's rules; its upstream steps must be done."""
    _select([name])
    step = STEPS[STEP_NAMES.index(name)]
    resolved = resolve_recipe(recipe, overrides)
    folder = state_dir(resolved)
    with pipeline_lock(folder):
        state = PipelineState.load(folder / "state.json", resolved.name)
        report, error = _execute(step, Context(resolved, state, force=force,
                                               progress=progress), None)
    if error is not None:
        result = PipelineResult(resolved, folder / "state.json", [report], report.duration_s)
        raise PipelineFailed(result, name, error) from error
    return report


def _select(steps: Sequence[str] | None) -> list[str]:
    if steps is None:
        return list(STEP_NAMES)
    unknown = [s for s in steps if s not in STEP_NAMES]
    if unknown or not steps:
        raise PipelineError(f"unknown pipeline step(s): {', '.join(unknown) or '(none)'}",
                            hint=f"steps are: {', '.join(STEP_NAMES)}")
    return [s for s in STEP_NAMES if s in steps]


def _execute(step: Step, ctx: Context, on_step: OnStep | None
             ) -> tuple[StepReport, Exception | None]:
    """Skip or run one step and record it; an exception is recorded, then returned.

    KeyboardInterrupt and SystemExit are recorded too (a Ctrl-C'd training is resumable),
    then propagate.
    """
    if on_step is not None:
        on_step(StepReport(step.name, "running"))
    started = time.perf_counter()
    input_hash: str | None = None
    try:
        input_hash = hash_json(step.inputs(ctx))
        previous = ctx.state.get(step.name)
        if (not ctx.force and previous is not None and previous.complete
                and previous.input_hash == input_hash and step.outputs_exist(previous.outputs)):
            report = StepReport(step.name, "skipped", time.perf_counter() - started,
                                previous.key, previous.outputs)
        else:
            outcome = step.run(ctx, input_hash)
            elapsed = time.perf_counter() - started
            ctx.state.record(StepRecord(step.name, outcome.status, input_hash, outcome.outputs,
                                        outcome.key, round(elapsed, 3)))
            report = StepReport(step.name, outcome.status, elapsed, outcome.key,
                                outcome.outputs)
    except BaseException as exc:
        report = _record_failure(step, ctx, input_hash, exc, time.perf_counter() - started)
        if on_step is not None:
            on_step(report)
        if not isinstance(exc, Exception):
            raise
        return report, exc
    if on_step is not None:
        on_step(report)
    return report, None


def _record_failure(step: Step, ctx: Context, input_hash: str | None, exc: BaseException,
                    elapsed: float) -> StepReport:
    running = ctx.state.get(step.name)
    # keep what a started step said about itself (train's run folder) so it can resume
    outputs = running.outputs if running is not None and running.status == "running" else {}
    text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}".rstrip(": ")
    first = text.splitlines()[0] if text else type(exc).__name__
    ctx.state.record(StepRecord(step.name, "failed", input_hash, outputs, first,
                                round(elapsed, 3), error=text))
    return StepReport(step.name, "failed", elapsed, first, outputs, error=text)


# ------------------------------------------------------- one function per step (Airflow)


def step_check(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
               progress: bool = False) -> StepReport:
    """Decode and validate every file of data.source (catalog.jsonl, data_report.json)."""
    return run_step("check", recipe, overrides=overrides, force=force, progress=progress)


def step_split(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
               progress: bool = False) -> StepReport:
    """Write (or reuse) the stratified split; `force` accepts a new split of changed data."""
    return run_step("split", recipe, overrides=overrides, force=force, progress=progress)


def step_train(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
               progress: bool = False) -> StepReport:
    """Train into a new run folder, or resume the killed training of the same inputs."""
    return run_step("train", recipe, overrides=overrides, force=force, progress=progress)


def step_evaluate(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
                  progress: bool = False) -> StepReport:
    """Score the trained run on its test split (RUN/evaluation/)."""
    return run_step("evaluate", recipe, overrides=overrides, force=force, progress=progress)


def step_export(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
                progress: bool = False) -> StepReport:
    """Export the run as a Bundle with an INT8 variant (RUN/bundle/)."""
    return run_step("export", recipe, overrides=overrides, force=force, progress=progress)


def step_register(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
                  progress: bool = False) -> StepReport:
    """Register the Bundle as a model version named after the recipe (tracking on only)."""
    return run_step("register", recipe, overrides=overrides, force=force, progress=progress)


def step_promote(recipe: RecipeLike, *, overrides: Sequence[str] = (), force: bool = False,
                 progress: bool = False) -> StepReport:
    """Move the champion alias to the new version unless it is worse than the champion."""
    return run_step("promote", recipe, overrides=overrides, force=force, progress=progress)
