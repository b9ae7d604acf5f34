"""`visiondeck train RECIPE [key=value ...]` and `visiondeck models list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(help="Network architectures.", no_args_is_help=True)


def train(
    recipe: Annotated[Path | None, typer.Argument(help="recipe YAML (or key=value only)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this folder")] = None,
    find_lr: Annotated[bool, typer.Option("--find-lr", help="run the learning-rate finder "
                                          "instead of training")] = False,
) -> None:
    """Train a model: defaults < RECIPE < key=value. Exit 5 when the quality gate fails."""
    from visiondeck.cli._ui import console
    from visiondeck.config import load_recipe

    if resume is not None:
        from visiondeck.registry.tracking import tracker_for_run
        from visiondeck.train.runner import resume as resume_run

        _report(resume_run(resume, tracker=tracker_for_run(resume)))
        return
    items = list(overrides or [])
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        items.insert(0, str(recipe))
        recipe = None
    resolved = load_recipe(recipe, items)
    if find_lr:
        from visiondeck.train.lr_find import find_lr as run_finder

        found = run_finder(resolved)
        console.print(f"suggested learning rate: [bold]{found.suggestion:.2e}[/] "
                      f"(plot: {found.plot})")
        console.print(f"use it with: train.lr={found.suggestion:.2e}")
        return
    from visiondeck.registry.tracking import tracker_for
    from visiondeck.train.runner import train as run

    _report(run(resolved, tracker=tracker_for(resolved)))


def _report(result) -> None:
    from rich.table import Table

    if result.status == "worker":  # a DDP rank other than zero: rank zero reports
        return

    from visiondeck.cli._ui import console

    table = Table(title=f"run {result.run_dir}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("best_val_acc", "val_acc", "val_loss", "train_acc", "train_loss_epoch"):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.4f}")
    table.add_row("epochs", str(result.epochs_run))
    table.add_row("time", f"{result.duration_s:.1f} s")
    if result.skipped_files:
        table.add_row("[yellow]skipped bad files[/]", str(result.skipped_files))
    console.print(table)
    if result.extra.get("already_finished"):
        console.print("[dim]this run had already finished: reported as recorded, nothing "
                      "retrained or rewritten[/]")
    if result.gate is not None:
        verdict = "[green]passed[/]" if result.gate.passed else "[red]FAILED[/]"
        console.print(f"quality gate {result.gate.metric} ≥ {result.gate.threshold}: {verdict} "
                      f"({result.gate.value})")
        if not result.gate.passed:
            raise typer.Exit(5)


@models_app.command("list")
def list_models(
    all_timm: Annotated[bool, typer.Option("--all", help="every timm architecture")] = False,
) -> None:
    """Architectures by name, and which have pretrained weights on this machine."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.models import list_models as catalogue

    table = Table(title="models (use as model.name=NAME)", title_justify="left")
    for column in ("name", "source", "input", "offline weights", "description"):
        table.add_column(column)
    for spec in catalogue(include_timm=all_timm):
        table.add_row(spec.name, spec.source, str(spec.input_size),
                      "[green]yes[/]" if spec.offline_weights else "no", spec.description)
    console.print(table)
