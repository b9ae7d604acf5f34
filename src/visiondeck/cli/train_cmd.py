"""`visiondeck train [RECIPE|SOURCE] [key=value ...] [--time 10m]` and `visiondeck models list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(help="Network architectures.", no_args_is_help=True)


def train(
    target: Annotated[str | None, typer.Argument(
        metavar="[RECIPE|SOURCE]",
        help="recipe YAML, or a data SOURCE (class folder, manifest, builtin:NAME) to train "
             "with an automatic recipe")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    time_budget: Annotated[str | None, typer.Option(
        "--time", help="time budget, e.g. 10m, 90s, 1h: the epochs are set so that training "
                       "and validation end within it (default 10m with a SOURCE)")] = None,
    auto: Annotated[bool, typer.Option("--auto", help="with a RECIPE: choose every key it "
                                       "leaves unset from the data")] = False,
    force: Annotated[bool, typer.Option("--force", help="accept a new split when the data or "
                                        "the split settings changed")] = False,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this folder")] = None,
    find_lr: Annotated[bool, typer.Option("--find-lr", help="run the learning-rate finder "
                                          "instead of training")] = False,
) -> None:
    """Train a model: defaults < RECIPE < key=value, or from a SOURCE with automatic choices.

    `visiondeck train builtin:fashion-mnist --time 10m` looks at the data, chooses the
    recipe, prints what it chose and why, and trains within the budget. Exit 5 when the
    quality gate fails.
    """
    from visiondeck.cli._ui import console
    from visiondeck.config import load_recipe

    if resume is not None:
        from visiondeck.registry.tracking import tracker_for_run
        from visiondeck.train.runner import resume as resume_run

        _report(resume_run(resume, tracker=tracker_for_run(resume)))
        return
    recipe, source, items = split_target(target, overrides)
    automatic = source is not None or auto
    budget_s = auto_budget(time_budget, recipe, items, automatic=automatic)
    plan = None
    if automatic:
        plan = resolve_auto(source, recipe, items, force=force)
        resolved = plan.recipe
    else:
        resolved = load_recipe(recipe, items)
    if find_lr:
        from visiondeck.train.lr_find import find_lr as run_finder

        found = run_finder(resolved)
        console.print(f"suggested learning rate: [bold]{found.suggestion:.2e}[/] "
                      f"(plot: {found.plot})")
        console.print(f"use it with: train.lr={found.suggestion:.2e}")
        return
    from visiondeck.registry.tracking import tracker_for

    tracker = tracker_for(resolved)
    if budget_s is None:
        from visiondeck.train.runner import train as run

        _report(run(resolved, tracker=tracker, force=force))
        return
    from visiondeck.train.budget import train_within

    result, _ = train_within(resolved, budget_s, tracker=tracker, force=force,
                             keep_epochs="train.epochs" in override_keys(items),
                             notes=plan.to_json() if plan else None, on_plan=print_plan,
                             split=plan.split if plan else None)
    _report(result)


#: the budget of `visiondeck train SOURCE` when neither --time nor train.epochs is given
DEFAULT_AUTO_TIME = "10m"


def split_target(target: str | None, overrides: list[str] | None
                 ) -> tuple[Path | None, str | None, list[str]]:
    """(recipe, source, overrides) from the first argument: a recipe YAML, a data source
    (builtin:NAME, a folder, a .csv/.parquet manifest) or the first key=value."""
    from visiondeck.data.sources import MANIFEST_SUFFIXES

    items = list(overrides or [])
    if target is None:
        return None, None, items
    path = Path(target)
    if "=" in target and not path.exists():
        return None, None, [target, *items]
    recipe_like = path.suffix.lower() in (".yaml", ".yml") or path.is_file()
    if (target.startswith("builtin:") or path.is_dir()
            or path.suffix.lower() in MANIFEST_SUFFIXES or not recipe_like):
        return None, target, items  # a missing folder is reported as a missing data source
    return path, None, items


def resolve_auto(source: str | None, recipe: Path | None, items: list[str], *,
                 force: bool = False):
    """The automatic recipe, with its table of choices printed."""
    from visiondeck.train.auto import auto_recipe

    plan = auto_recipe(source, recipe_path=recipe, overrides=items, force=force)
    print_choices(plan)
    return plan


def print_choices(plan) -> None:
    """What was chosen, by whom, and from which measurement."""
    from rich.table import Table

    from visiondeck.cli._ui import console

    profile = plan.profile
    kinds = (f"{len(profile.classes)} labels ({profile.labels_per_image:.2f} per image)"
             if profile.multilabel else f"{len(profile.classes)} classes")
    title = (f"automatic recipe for {plan.notes.get('source')}: {profile.images} training "
             f"images, {kinds}, {profile.median_width}×{profile.median_height} px median")
    table = Table(title=title, title_justify="left")
    table.add_column("key")
    table.add_column("value")
    table.add_column("by")
    table.add_column("why (measurement → rule)")
    for choice in plan.choices:
        value = choice.value
        shown = ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)
        by = "[dim]auto[/]" if choice.by == "auto" else f"[bold]{choice.by}[/]"
        table.add_row(choice.key, shown, by, choice.why)
    console.print(table)


def print_plan(plan, recipe) -> None:
    """The budget's arithmetic: what the probe measured and the epochs it buys."""
    from visiondeck.cli._ui import console

    if plan is None:
        console.print(f"time budget: train.epochs={recipe.train.epochs} kept (set by you); "
                      "the run stops early at an epoch's end if the next would overrun")
        return
    t = plan.throughput
    cut = f", cut to {plan.epoch_steps} steps" if plan.epoch_steps else ""
    if t.threads_tried:
        tried = ", ".join(f"{k} thread(s) {v * 1000:.0f} ms" for k, v in t.threads_tried.items())
        console.print(f"CPU threads: {tried} per step → {t.threads}", highlight=False)
    console.print(
        f"time budget {plan.budget_s:.0f} s: probe {t.probe_s:.1f} s measured "
        f"{t.step_s * 1000:.1f} ms/step × {t.steps_per_epoch} steps + {t.val_batches} "
        f"validation batches × {t.val_batch_s * 1000:.1f} ms = {t.epoch_s:.1f} s per epoch → "
        f"[bold]{plan.epochs} epoch(s){cut}[/], predicted {plan.predicted_s:.0f} s",
        highlight=False)


def auto_budget(text: str | None, recipe: Path | str | None, items: list[str], *,
                automatic: bool) -> float | None:
    """Seconds of `--time`; with an automatic recipe and no epochs set by the user (recipe
    or key=value), DEFAULT_AUTO_TIME; else None (the recipe's epochs, no budget)."""
    from visiondeck.train.budget import parse_duration

    if text is not None:
        return parse_duration(text)
    if not automatic or "train.epochs" in override_keys(items):
        return None
    if recipe is not None:
        from visiondeck.config import read_recipe_file

        if "epochs" in (read_recipe_file(recipe).get("train") or {}):
            return None
    return parse_duration(DEFAULT_AUTO_TIME)


def override_keys(items: list[str]) -> set[str]:
    """The dotted keys of `key=value` arguments."""
    return {item.partition("=")[0].strip() for item in items}


def _report(result) -> None:
    from rich.table import Table

    if result.status == "worker":  # a DDP rank other than zero: rank zero reports
        return

    from visiondeck.cli._ui import console

    table = Table(title=f"run {result.run_dir}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("best_val_acc", "val_acc", "best_val_map", "val_map", "val_f1",  # multi-label
                "val_loss", "train_acc", "train_loss_epoch"):
        if key in result.metrics:
            table.add_row(key, f"{result.metrics[key]:.4f}")
    table.add_row("epochs", str(result.epochs_run))
    table.add_row("time", f"{result.duration_s:.1f} s")
    budget = result.extra.get("budget")
    if budget:
        held = "[green]held[/]" if budget["within"] else "[red]overrun[/]"
        table.add_row("time budget", f"{budget['elapsed_s']:.0f} of {budget['budget_s']:.0f} s "
                      f"({held})")
        if budget.get("replans"):  # the epochs after each re-plan (train.guard)
            totals = [budget["epochs_planned"], *(r["epochs"] for r in budget["replans"])]
            table.add_row("epochs re-planned", " → ".join(map(str, totals)))
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
