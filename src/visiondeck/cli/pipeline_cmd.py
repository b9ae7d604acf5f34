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
    recipe: Annotated[Path | None, typer.Argument(help="recipe YAML (or key=value only)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
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
    from visiondeck.errors import ConfigError

    items = list(overrides or [])
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        items.insert(0, str(recipe))
        recipe = None
    if from_step is not None and only:
        raise ConfigError("--from and --only do not go together", hint="pick one")
    steps = None
    if from_step is not None:
        if from_step not in _STEPS:
            raise ConfigError(f"unknown step {from_step!r}", hint=f"steps: {', '.join(_STEPS)}")
        steps = list(_STEPS[_STEPS.index(from_step):])
    elif only:
        steps = list(only)

    run_and_report(recipe, items, force=force, steps=steps)


def run_and_report(recipe: Path | str | None, overrides: list[str], *, force: bool = False,
                   steps: list[str] | None = None) -> PipelineResult:
    """Run the pipeline with a rule per step and the summary table at the end (also on
    failure); exit with the failed step's code, or 5 when the model failed its gate."""
    from visiondeck.cli._ui import console, print_error
    from visiondeck.pipeline import PipelineFailed, run_pipeline, summary_table

    def show(report) -> None:
        if report.status == "running":
            console.rule(f"[bold]{report.name}[/]", align="left")
        elif report.status != "failed":
            console.print(f"{report.name}: {report.status} ({report.duration_s:.1f} s) "
                          f"{report.key}", highlight=False)

    try:
        result = run_pipeline(recipe, overrides=overrides, force=force, steps=steps,
                              progress=True, on_step=show)
    except PipelineFailed as exc:
        console.print(summary_table(exc.result))
        print_error(exc)
        raise typer.Exit(exc.exit_code) from None
    console.print(summary_table(result))
    if result.gate_passed is False:
        console.print("[red]the model failed its quality gate[/] (train.min_val_accuracy)")
        raise typer.Exit(5)
    return result
