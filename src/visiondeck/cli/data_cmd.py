"""`visiondeck data ...`: check, split and materialise data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Validate, split and materialise image data.", no_args_is_help=True)

_STATUS_MEANING = {
    "ok": "decoded fine",
    "zero_bytes": "empty file",
    "not_an_image": "not an image (by its bytes)",
    "unsupported_format": "refused format (EPS, SVG, PDF, ...)",
    "corrupt": "undecodable data",
    "truncated": "file ends early",
    "too_small": "far below the set's own sizes, or below --min-size",
    "bomb": "above data.max_pixels (decompression bomb)",
    "too_large": "above the byte limit",
    "missing": "listed but not found",
    "duplicate": "same bytes as another file",
    "label_conflict": "same bytes under two classes",
}

Source = Annotated[str, typer.Argument(help="class-folder dir, manifest (.csv/.parquet) or "
                                            "builtin:NAME")]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="prepared folder "
                                          "(default prepared/NAME)")]
Workers = Annotated[int | None, typer.Option(help="decode processes (default: one per core)")]


@app.command()
def check(
    source: Source,
    out: Out = None,
    quarantine: Annotated[bool, typer.Option(help="move problem files aside (never deletes)")]
    = False,
    quarantine_dir: Annotated[Path | None, typer.Option(help="where to move them (default "
                                                        "SOURCE.quarantine)")] = None,
    min_size: Annotated[int | None, typer.Option(help="smallest accepted side in pixels "
                                                 "(default: relative to the set's own sizes)")
                        ] = None,
    max_pixels: Annotated[int, typer.Option(help="decompression-bomb pixel cap")] = 64_000_000,
    workers: Workers = None,
    show: Annotated[int, typer.Option(help="problem files to list")] = 30,
    task: Annotated[str, typer.Option(help="auto, single or multilabel (a manifest with a "
                                      "labels column or 0/1 label columns is multilabel)")
                    ] = "auto",
) -> None:
    """Decode every file and report problems; exit code 3 when any are found."""
    from visiondeck.cli._ui import EXIT_ISSUES, console
    from visiondeck.data.catalog import MIN_DECODABLE_SIDE
    from visiondeck.data.prepare import check_data
    from visiondeck.data.validate import quarantine as move_aside
    from visiondeck.imaging import DecodeLimits

    limits = DecodeLimits(max_pixels=max_pixels, min_side=min_size or MIN_DECODABLE_SIDE)
    result = check_data(source, prepared=out, limits=limits, workers=workers, progress=True,
                        size_outliers=min_size is None, task=task)
    report = result.report
    _print_report(report, reused=result.reused)
    console.print(f"report: {result.prepared / 'data_report.json'}")
    if quarantine and report.problems:
        dest = quarantine_dir or report.root.with_name(report.root.name + ".quarantine")
        moved = move_aside(report, dest)
        console.print(f"[yellow]quarantined {len(moved.moved)} file(s)[/] into {moved.destination}"
                      f" (list: {moved.manifest})")
        if moved.outside:
            console.print(f"[yellow]left {len(moved.outside)} problem file(s) in place: outside "
                          f"the data root {report.root}[/] (never moved)")
            for relpath in moved.outside[:show]:
                console.print(f"  outside the data root: {relpath}", markup=False,
                              highlight=False, soft_wrap=True)
        for relpath, error in moved.failed:
            console.print(f"[red]could not move[/] {relpath}: {error}")
    if report.has_issues:
        raise typer.Exit(EXIT_ISSUES)


def _print_report(report, *, reused: int = 0) -> None:
    from rich.table import Table

    from visiondeck.cli._ui import console

    status = Table(title=f"{len(report.entries)} files in {report.root}", title_justify="left")
    status.add_column("status")
    status.add_column("files", justify="right")
    status.add_column("meaning", style="dim")
    for name, count in report.status_counts.items():
        style = "green" if name == "ok" else "red"
        status.add_row(f"[{style}]{name}[/]", str(count), _STATUS_MEANING.get(name, ""))
    console.print(status)

    counts = report.class_counts
    multilabel = getattr(report, "task", "single") == "multilabel"
    if counts:
        classes = Table(title="usable images per label (multi-label)" if multilabel
                        else "usable images per class", title_justify="left")
        classes.add_column("class")
        classes.add_column("images", justify="right")
        classes.add_column("")
        top = max(counts.values())
        for name, count in counts.items():
            classes.add_row(name, str(count), "█" * max(1, round(24 * count / top)))
        console.print(classes)
        console.print(f"imbalance ratio (largest/smallest class): {report.imbalance_ratio:.2f}")
    if multilabel:
        _print_label_statistics(report.label_statistics())

    problems = report.problems
    if problems:
        table = Table(title="problem files", title_justify="left")
        table.add_column("file")
        table.add_column("status", style="red")
        table.add_column("why")
        for entry in problems[:30]:
            table.add_row(entry.relpath, entry.status.value, entry.message)
        console.print(table)
        if len(problems) > 30:
            console.print(f"... and {len(problems) - 30} more (see the JSON report)")
    if report.normalised:
        notes: dict[str, int] = {}
        for entry in report.normalised:
            for note in entry.notes:
                notes[note] = notes.get(note, 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in sorted(notes.items()))
        console.print(f"normalised on load (kept): {summary}")
    if report.near_duplicate_groups:
        console.print(f"near-duplicate groups (kept together in splits): "
                      f"{len(report.near_duplicate_groups)}")
    if reused:
        console.print(f"[dim]{reused} unchanged file(s) taken from the previous scan[/]")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def _print_label_statistics(stats: dict) -> None:
    """Labels per file and how often two labels come together (multi-label sources)."""
    from rich.table import Table

    from visiondeck.cli._ui import console

    per_file = ", ".join(f"{k}: {v}" for k, v in stats["labels_per_file"].items())
    console.print(f"labels per file: {per_file} (mean {stats['mean_labels_per_file']:.2f}); "
                  f"{stats['files_without_label']} file(s) without a label")
    names = stats["labels"]
    if len(names) > 12:
        console.print("co-occurrence counts: see label_statistics in the JSON report")
        return
    table = Table(title="co-occurrence (files carrying both labels)", title_justify="left")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, stats["cooccurrence"], strict=True):
        table.add_row(name, *(str(v) for v in row))
    console.print(table)


@app.command()
def split(
    source: Source,
    out: Out = None,
    val: Annotated[float, typer.Option(help="validation fraction")] = 0.15,
    test: Annotated[float, typer.Option(help="test fraction")] = 0.15,
    folds: Annotated[int, typer.Option(help="k stratified folds (0 = plain split)")] = 0,
    seed: Annotated[int, typer.Option(help="split seed")] = 42,
    force: Annotated[bool, typer.Option(help="replace an existing split that no longer "
                                        "matches")] = False,
    workers: Workers = None,
    task: Annotated[str, typer.Option(help="auto, single or multilabel (multilabel: "
                                      "iterative stratification over label sets)")] = "auto",
) -> None:
    """Write a stratified, seeded split (reused as long as the data is unchanged)."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.config import DataConfig
    from visiondeck.data.prepare import prepare_split

    if task not in ("auto", "single", "multilabel"):
        raise typer.BadParameter(f"unknown task {task!r}: use auto, single or multilabel")
    cfg = DataConfig(source=source, val_fraction=val, test_fraction=test, folds=folds,
                     seed=seed, num_workers=workers, task=task)
    outcome = prepare_split(cfg, prepared=out, force=force, progress=True)
    split_ = outcome.split
    verb = "reused unchanged split" if outcome.reused else "wrote split"
    console.print(f"{verb} [bold]{split_.id}[/] in {outcome.check.prepared}")
    table = Table(title_justify="left")
    table.add_column("label (files carrying it)" if split_.multilabel else "class")
    subsets = ["train", "val", "test"]
    for name in subsets:
        table.add_column(name, justify="right")
    counts = split_.counts()
    for cls in split_.classes:
        table.add_row(cls, *(str(counts[s][cls]) for s in subsets))
    totals = ([len(split_.subset(s)) for s in subsets] if split_.multilabel
              else [sum(counts[s].values()) for s in subsets])
    table.add_row("[bold]total[/]" + (" files" if split_.multilabel else ""),
                  *(str(n) for n in totals))
    console.print(table)
    if split_.folds:
        console.print(f"{split_.folds} folds over the non-test files")
    skipped = len(outcome.check.report.problems)
    if skipped:
        console.print(f"[yellow]{skipped} problem file(s) left out[/] "
                      "(see `visiondeck data check`)")


@app.command()
def materialize(
    name: Annotated[str, typer.Argument(help="built-in data set: fashion-mnist or sample")],
    out: Annotated[Path, typer.Argument(help="folder to write")],
    subset: Annotated[list[str] | None, typer.Option(help="train/test (default all)")] = None,
    root: Annotated[Path | None, typer.Option(help="folder holding the Fashion-MNIST IDX "
                                              "files")] = None,
    download: Annotated[bool, typer.Option(help="download (with checksums) when not found")]
    = False,
    limit_per_class: Annotated[int | None, typer.Option(help="at most N images per class")]
    = None,
) -> None:
    """Write a built-in data set as PNG files in class folders: the layout VisionDeck reads."""
    from visiondeck.cli._ui import console
    from visiondeck.data.materialize import materialize as write

    result = write(name, out, subsets=subset, root=root, download=download,
                   limit_per_class=limit_per_class, progress=True)
    console.print(f"wrote {result.files_written} file(s) to {result.out_dir} "
                  f"({result.skipped_existing} already there)")
    for sub, per_class in result.counts.items():
        console.print(f"  {sub or '.'}: {sum(per_class.values())} images in "
                      f"{len(per_class)} classes")


@app.command()
def audit(
    target: Annotated[str, typer.Argument(
        metavar="SOURCE|RECIPE",
        help="data SOURCE (automatic recipe, as `visiondeck train SOURCE`) or recipe YAML")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    folds: Annotated[int, typer.Option(help="k: every image is scored by the model of the "
                                       "fold that held it out")] = 5,
    time_budget: Annotated[str | None, typer.Option(
        "--time", help="budget for the whole audit, e.g. 5m (default 10m with a SOURCE, "
                       "none when train.epochs is set)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="audit folder (default "
                                             "runs/NAME-audit); a rerun reuses finished "
                                             "folds")]
    = None,
    dup_threshold: Annotated[float, typer.Option(help="embedding cosine from which two images "
                                                 "are near-duplicates (when their pixels "
                                                 "agree too)")] = 0.95,
    show: Annotated[int, typer.Option(help="suspects shown in report.html (the CSV has "
                                      "all)")] = 300,
    force: Annotated[bool, typer.Option(help="accept a new split when the data changed")]
    = False,
) -> None:
    """Find likely-wrong labels: out-of-fold training, confident learning (cleanlab),
    near-duplicates with another label and outliers; writes suspects.csv (flagged),
    possible.csv (less certain) and report.html."""
    from rich.table import Table

    from visiondeck.audit.core import audit as run_audit
    from visiondeck.cli._ui import console
    from visiondeck.cli.train_cmd import auto_budget, resolve_auto, split_target
    from visiondeck.config import load_recipe

    recipe_path, source, items = split_target(target, overrides)
    budget_s = auto_budget(time_budget, recipe_path, items, automatic=source is not None)
    if source is not None:
        recipe = resolve_auto(source, recipe_path, items, force=force).recipe
    else:
        recipe = load_recipe(recipe_path, items)
    folder = out or Path(recipe.output_dir) / f"{recipe.name}-audit"
    budget = f", budget {budget_s:.0f} s" if budget_s else ""
    console.print(f"auditing {recipe.data.source} with {folds} folds of {recipe.model.name}"
                  f"{budget} → {folder}", highlight=False)

    def on_fold(fold: int, status: str, info: dict) -> None:
        verb = "reused" if status == "reused" else "trained"
        console.print(f"fold {fold + 1}/{folds} {verb}: {info['epochs']} epoch(s), "
                      f"held-out accuracy {info['accuracy']:.3f}", highlight=False)

    result = run_audit(recipe, folder, folds=folds, budget_s=budget_s, progress=True,
                       dup_threshold=dup_threshold, show=show, force=force,
                       on_fold=on_fold)
    counts = result.findings.counts()
    table = Table(title=f"{len(result.oof.relpaths)} images, out-of-fold accuracy "
                        f"{result.findings.accuracy:.3f}, {result.elapsed_s:.0f} s",
                  title_justify="left")
    table.add_column("finding")
    table.add_column("images", justify="right")
    table.add_row("likely wrong label (cleanlab, confident)", str(counts["label_issues"]))
    table.add_row("possible wrong label (possible.csv)", str(counts["possible_label_issues"]))
    table.add_row("near-duplicate pairs with another label", str(counts["near_duplicate_pairs"]))
    table.add_row("outliers", str(counts["outliers"]))
    table.add_row("[bold]suspects listed[/]", str(counts["suspects"]))
    console.print(table)
    top = Table(title="most suspect", title_justify="left")
    for column in ("path", "given", "suggested", "score", "why"):
        top.add_column(column)
    for s in result.findings.suspects[:10]:
        top.add_row(s.path, s.given, s.suggested, f"{s.score:.3f}", ", ".join(s.reasons))
    if result.findings.suspects:
        console.print(top)
    console.print(f"report: {result.html}\neditable list: {result.csv} — then "
                  f"`visiondeck data relabel {recipe.data.source} {result.csv}`",
                  highlight=False)


@app.command()
def relabel(
    source: Source,
    edits: Annotated[Path, typer.Argument(help="the reviewed suspects.csv (path,suggested; "
                                          "- leaves an image out)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="corrected manifest "
                                             "(default NAME.relabelled.csv beside the "
                                             "data)")] = None,
) -> None:
    """Write a corrected path,label manifest; the images are never modified or deleted."""
    from visiondeck.audit.relabelling import relabel as write_relabelled
    from visiondeck.cli._ui import console

    result = write_relabelled(source, edits, out=out)
    console.print(f"wrote {result.manifest}: {result.rows} images, {len(result.changed)} "
                  f"relabelled, {len(result.dropped)} left out, {result.unchanged} kept as "
                  "they were", highlight=False)
    for path, (old, new) in list(result.changed.items())[:20]:
        console.print(f"  {path}: {old} → {new}", markup=False, highlight=False)
    if len(result.changed) > 20:
        console.print(f"  … and {len(result.changed) - 20} more")
    console.print(f"train on it with data.source={result.manifest}", highlight=False)
