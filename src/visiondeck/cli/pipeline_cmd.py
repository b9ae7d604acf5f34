"""`visiondeck pipeline RECIPE [key=value ...] [--force] [--from STEP] [--only STEP]`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from visiondeck.pipeline.runner import PipelineResult

#: the step names, repeated here so `--help` needs no import of the pipeline package
_STEPS = ("check", "split", "train", "evaluate", "export", "register", "promote")


def pipeline(
    target: Annotated[str | None, typer.Argument(
        metavar="[RECIPE|SOURCE]",
        help="recipe YAML, or a data SOURCE (class folder, manifest, builtin:NAME) for an "
             "automatic recipe")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    time_budget: Annotated[str | None, typer.Option(
        "--time", help="train within this budget, e.g. 10m (default 10m with a SOURCE)")
                           ] = None,
    auto: Annotated[bool, typer.Option("--auto", help="with a RECIPE: choose every key it "
                                       "leaves unset from the data")] = False,
    force: Annotated[bool, typer.Option("--force", help="re-run the chosen steps even when "
                                        "unchanged; accept a new split of changed data")
                     ] = False,
    from_step: Annotated[str | None, typer.Option("--from", help="start at this step "
                                                  f"({', '.join(_STEPS)})")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="run only this step "
                                                   "(repeatable)")] = None,
) -> None:
    """check → split → train → evaluate → export (+int8) → register → promote.

    Steps whose inputs are unchanged since the last run are skipped; after a failure the
    next run resumes at the failed step. Exit 5 when the model fails its quality gate.
    """
    from visiondeck.cli.train_cmd import split_target
    from visiondeck.errors import ConfigError

    recipe, source, items = split_target(target, overrides)
    if from_step is not None and only:
        raise ConfigError("--from and --only do not go together", hint="pick one")
    steps = None
    if from_step is not None:
        if from_step not in _STEPS:
            raise ConfigError(f"unknown step {from_step!r}", hint=f"steps: {', '.join(_STEPS)}")
        steps = list(_STEPS[_STEPS.index(from_step):])
    elif only:
        steps = list(only)

    run_and_report(recipe, items, force=force, steps=steps, source=source, auto=auto,
                   time_budget=time_budget)


def run_and_report(recipe: Path | str | None, overrides: list[str], *, force: bool = False,
                   steps: list[str] | None = None, source: str | None = None,
                   auto: bool = False, time_budget: str | None = None) -> PipelineResult:
    """Run the pipeline with a rule per step and the summary table at the end (also on
    failure); exit with the failed step's code, or 5 when the model failed its gate.

    With a `source` (or `auto`), the recipe is chosen from the data first and its table of
    choices printed; `time_budget` (default 10m then, unless train.epochs is given) makes
    the train step fit it."""
    from visiondeck.cli._ui import console, print_error
    from visiondeck.cli.train_cmd import auto_budget, resolve_auto
    from visiondeck.pipeline import PipelineFailed, run_pipeline, summary_table

    def show(report) -> None:
        if report.status == "running":
            console.rule(f"[bold]{report.name}[/]", align="left")
        elif report.status != "failed":
            console.print(f"{report.name}: {report.status} ({report.duration_s:.1f} s) "
                          f"{report.key}", highlight=False)

    automatic = source is not None or auto
    budget_s = auto_budget(time_budget, recipe, overrides, automatic=automatic)
    notes = None
    if automatic:
        plan = resolve_auto(source, Path(recipe) if recipe else None, overrides, force=force)
        recipe, overrides, notes = plan.recipe, [], plan.to_json()
    try:
        result = run_pipeline(recipe, overrides=overrides, force=force, steps=steps,
                              progress=True, on_step=show, budget_s=budget_s, notes=notes)
    except PipelineFailed as exc:
        console.print(summary_table(exc.result))
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    console.print(summary_table(result))
    if result.gate_passed is False:
        console.print("[red]the model failed its quality gate[/] (train.min_val_accuracy)")
        raise typer.Exit(5)
    return result

