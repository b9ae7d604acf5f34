"""`visiondeck evaluate`, `compare` and `ablate`: reports a reviewer would trust."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _recipe(target: Path | None, overrides: list[str] | None):
    from visiondeck.config import load_recipe

    items = list(overrides or [])
    if target is not None and "=" in target.name and not target.exists():
        items.insert(0, str(target))
        target = None
    return load_recipe(target, items)


def _headline_table(title: str, headline: dict, ci: dict | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95 % CI", justify="right")
    for key, value in headline.items():
        interval = (ci or {}).get(key)
        shown = interval and None not in interval
        text = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if shown else ""
        table.add_row(key, f"{value:.4f}", text)
    return table


def evaluate(
    target: Annotated[Path, typer.Argument(help="run folder (or RECIPE with --cv)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value (with --cv)")] = None,
    split: Annotated[str, typer.Option(help="test or val")] = "test",
    cv: Annotated[int | None, typer.Option("--cv", help="k-fold cross-validation of RECIPE")
                  ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="average with the mirrored image")] = False,
    positive_class: Annotated[str | None, typer.Option(help="class whose sensitivity and "
                                                       "specificity are reported")] = None,
    target_sensitivity: Annotated[float | None, typer.Option(
        help="binary tasks: tune the decision threshold on validation for this sensitivity")
    ] = None,
    reject: Annotated[str, typer.Option(help="unknown-input rule: max_prob or energy")
                      ] = "max_prob",
    keep: Annotated[float, typer.Option(help="share of validation images the reject rule "
                                        "must still answer")] = 0.95,
    ood: Annotated[Path | None, typer.Option(help="folder of images unlike the training data")
                   ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default RUN/evaluation)")
                   ] = None,
    gradcam: Annotated[int, typer.Option(help="Grad-CAM samples per right/wrong group")] = 6,
    boot: Annotated[int, typer.Option(help="bootstrap resamples for the intervals")] = 1000,
    gate: Annotated[str | None, typer.Option(
        help="fail (exit 5) unless e.g. sensitivity>=0.92,specificity>=0.88,auc>=0.95 holds "
             "on val at the chosen threshold and on the test split (default: train.gate)")
    ] = None,
    engine: Annotated[str, typer.Option(help="local, or ray: each fold (--cv) a Ray task "
                                        "(pip install 'visiondeck\\[ray]')")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (--engine ray; "
                                                "default RAY_ADDRESS, else a local Ray)")] = None,
    cpus_per_task: Annotated[float, typer.Option(help="CPUs each Ray task asks for")] = 1.0,
    retries: Annotated[int, typer.Option(help="Ray retries of a fold (--cv) whose worker "
                                         "died")] = 2,
) -> None:
    """Metrics, calibration, rejection threshold and a self-contained report.html.

    Exit 5 when the gate (--gate, else the recipe's train.gate) fails."""
    from visiondeck.cli._ui import console

    options = {"tta": tta, "positive_class": positive_class,
               "target_sensitivity": target_sensitivity, "reject_method": reject,
               "reject_keep": keep, "ood_dir": ood, "n_boot": boot}
    if cv is not None:
        executor = _study_executor(engine, address, cpus_per_task, retries)
        _cross_validate(target, overrides, cv, out, options, executor)
        return
    if engine != "local":
        raise typer.BadParameter("--engine ray runs studies: give --cv K")
    if overrides:
        raise typer.BadParameter("key=value overrides only go with --cv RECIPE")
    from visiondeck.evaluate.core import evaluate_run

    with console.status(f"evaluating {target} …"):
        result = evaluate_run(target, split, out_dir=out, gradcam_samples=gradcam, gate=gate,
                              **options)
    metrics = result.metrics
    console.print(_headline_table(f"{target} — {split} ({metrics['n']} images)",
                                  result.headline, metrics.get("ci95")))
    if metrics.get("task") == "multilabel":
        console.print(_label_table(metrics))
        calib = metrics["calibration"]
        console.print(f"temperature per label (fitted on val): mean ECE "
                      f"{calib['ece_macro_before']:.3f} → {calib['ece_macro_after']:.3f}")
        console.print(f"report: {result.report}\nmetrics: {result.out_dir / 'metrics.json'}")
        _track(target, result)
        _gate_verdict(result.gate)
        return
    calib = metrics["calibration"]
    console.print(f"temperature {calib['temperature']:.3f}: ECE {calib['ece_before']:.3f} → "
                  f"{calib['ece_after']:.3f}, NLL {calib['nll_before']:.3f} → "
                  f"{calib['nll_after']:.3f}")
    rates = ", ".join(f"{k} {v:.0%}" for k, v in metrics["reject"]["fire_rate"].items()
                      if v is not None)
    rule = metrics["reject"]
    test = "top probability <" if rule["method"] == "max_prob" else "energy >"
    console.print(f"unknown when {test} {rule['threshold']:.4g}; answered unknown: {rates}")
    if result.skipped:
        console.print(f"[yellow]skipped {len(result.skipped)} unreadable files[/]")
    console.print(f"report: {result.report}\nmetrics: {result.out_dir / 'metrics.json'}")
    _track(target, result)
    _gate_verdict(result.gate)


def _gate_verdict(gate: dict | None) -> None:
    """Print the gate's table; exit 5 when it failed (both tasks)."""
    from visiondeck.cli._ui import console

    if gate is not None:
        console.print(_gate_table(gate))
        if not gate["passed"]:
            console.print("[red]the model failed its evaluation gate[/]; `visiondeck register` "
                          "will refuse it unless --force")
            raise typer.Exit(5)


def _label_table(metrics: dict):
    """Multi-label runs: each label's scores at its threshold (chosen on validation)."""
    from rich.table import Table

    table = Table(title=f"per label, thresholds chosen on val "
                        f"({metrics['thresholds']['method']})", title_justify="left")
    for column in ("label", "support", "T", "threshold", "AP", "ROC-AUC", "F1",
                   "sensitivity", "specificity", "ECE before → after"):
        table.add_column(column, justify="left" if column == "label" else "right")

    def number(value) -> str:
        return "–" if value is None else f"{value:.4f}"

    calib = metrics.get("calibration") or {}
    for name, row in metrics["per_label"].items():
        ece = (f"{number((calib.get('ece_before') or {}).get(name))} → "
               f"{number((calib.get('ece_after') or {}).get(name))}")
        table.add_row(name, str(row["support"]),
                      number((calib.get("temperatures") or {}).get(name)),
                      number(row["threshold"]),
                      number(row["average_precision"]), number(row["roc_auc"]),
                      number(row["f1"]), number(row["sensitivity"]),
                      number(row["specificity"]), ece)
    return table


def _gate_table(gate: dict):
    """Each rule on val and on the scored split, with the split's bootstrap 95 % interval."""
    from rich.table import Table

    split = gate.get("split", "test")
    rule = gate.get("threshold")
    where = (f" at p({rule['positive_class']}) ≥ {rule['threshold']:.4g} (chosen on val)"
             if rule and "positive_class" in rule else
             " at the per-label thresholds (chosen on val)" if rule else "")
    verdict = "[green]passed[/]" if gate["passed"] else "[red]FAILED[/]"
    table = Table(title=f"gate {gate['spec']}{where}: {verdict}", title_justify="left")
    for column in ("rule", "val", split, "95 % CI", "verdict"):
        table.add_column(column, justify="left" if column == "rule" else "right")

    def number(value) -> str:
        return "–" if value is None else f"{value:.4f}"

    for row in gate["rules"]:
        ci = row.get(f"{split}_ci95")
        shown = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
        table.add_row(f"{row['metric']} {row['op']} {row['bound']:g}", number(row.get("val")),
                      number(row.get(split)), shown,
                      "[green]pass[/]" if row["passed"] else "[red]fail[/]")
    return table


def _track(run_dir: Path, result) -> None:
    """Attach the evaluation to the run's MLflow run when training linked one."""
    if not (Path(run_dir) / "mlflow.json").is_file():
        return
    try:
        from visiondeck.registry.runlog import log_evaluation
    except ImportError:
        return
    log_evaluation(run_dir, result.out_dir / "metrics.json", result.report,
                   artifacts_dir=result.out_dir)


def _study_executor(engine: str, address: str | None, cpus: float, retries: int):
    """None (cells and folds run here, in order), or Ray's executor for --engine ray."""
    from visiondeck.errors import ConfigError

    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine {engine!r}", hint="use local or ray")
    if engine == "local":
        return None
    from visiondeck.scale.ray_study import RayStudyExecutor

    return RayStudyExecutor(address, num_cpus=cpus, retries=retries)


def _cross_validate(target: Path, overrides: list[str] | None, folds: int, out: Path | None,
                    options: dict, executor=None) -> None:
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.evaluate.cv import cross_validate

    recipe = _recipe(target, overrides)

    def report(fold: int, headline: dict) -> None:
        if "map_macro" in headline:  # a multi-label fold
            console.print(f"fold {fold + 1}/{folds}: mAP {headline['map_macro']:.4f} "
                          f"(micro {headline['map_micro']:.4f}), macro F1 "
                          f"{headline['f1_macro']:.4f}, subset accuracy "
                          f"{headline['subset_accuracy']:.4f}, Hamming loss "
                          f"{headline['hamming_loss']:.4f}")
            return
        console.print(f"fold {fold + 1}/{folds}: accuracy {headline.get('accuracy', 0):.4f}")

    tracker = _study_tracker(recipe)
    result = cross_validate(recipe, folds, out_dir=out, evaluate=options, on_fold=report,
                            tracker=tracker, executor=executor)
    table = Table(title=f"{folds}-fold cross-validation ({result.out_dir})", title_justify="left")
    for column in ("metric", "mean", "± std", "min", "max"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, row in result.summary.items():
        table.add_row(key, f"{row['mean']:.4f}", f"{row['std']:.4f}", f"{row['min']:.4f}",
                      f"{row['max']:.4f}")
    console.print(table)
    _say_tracked(tracker)


def _study_tracker(recipe):
    """MLflow's study tracker when the recipe tracks (one parent run, nested children)."""
    from visiondeck.registry.study import study_tracker_for

    return study_tracker_for(recipe)


def _say_tracked(tracker) -> None:
    if tracker is not None and tracker.run_id is not None:
        from visiondeck.cli._ui import console

        console.print(f"tracked as MLflow run {tracker.run_id} (children nested; "
                      "`visiondeck runs list` shows them)")


def compare(
    sources: Annotated[list[str], typer.Argument(help="run folders or Bundles (2 or more)")],
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    boot: Annotated[int, typer.Option(help="bootstrap resamples")] = 500,
) -> None:
    """Models side by side on the same test images, with McNemar's paired test."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.evaluate.compare import compare_models

    with console.status("scoring models …"):
        result = compare_models(sources, out_dir=out, n_boot=boot)
    table = Table(title=f"{result.n} paired test images", title_justify="left")
    table.add_column("metric")
    for model in result.models:
        table.add_column(model.name, justify="right")
    keys = sorted({k for m in result.models for k in m.headline})
    for key in keys:
        table.add_row(key, *(f"{m.headline[key]:.4f}" if key in m.headline else "–"
                             for m in result.models))
    table.add_row("parameters", *(f"{m.parameters:,}" for m in result.models))
    table.add_row("latency (ms)", *(f"{m.latency_ms:.2f}" for m in result.models))
    console.print(table)
    for test in result.mcnemar:
        verdict = ("[bold]different[/]" if test["significant_5pct"]
                   else "no significant difference")
        console.print(f"McNemar {test['a']} vs {test['b']}: {test['a_only_right']} vs "
                      f"{test['b_only_right']} disagreements, p = {test['p_value']:.4f} "
                      f"→ {verdict}")
    console.print(f"report: {result.report}")


def ablate(
    recipe: Annotated[Path | None, typer.Argument(help="recipe YAML (or key=value only)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    vary: Annotated[list[str] | None, typer.Option("--vary", help="KEY=V1,V2 (repeatable)")
                    ] = None,
    seeds: Annotated[str, typer.Option(help="comma-separated train seeds per cell")] = "0",
    design: Annotated[str, typer.Option(help="grid or ofat (one factor at a time)")] = "grid",
    metric: Annotated[str, typer.Option(help="headline metric to compare")] = "accuracy",
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    engine: Annotated[str, typer.Option(help="local, or ray: each cell a Ray task "
                                        "(pip install 'visiondeck\\[ray]')")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (--engine ray; "
                                                "default RAY_ADDRESS, else a local Ray)")] = None,
    cpus_per_task: Annotated[float, typer.Option(help="CPUs each Ray task asks for")] = 1.0,
    retries: Annotated[int, typer.Option(help="Ray retries of a cell whose worker died")] = 2,
) -> None:
    """Train a grid of variants on the same split and seeds; table, chart, effects."""
    from rich.progress import Progress
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.evaluate.ablate import ablate as run_ablation
    from visiondeck.evaluate.ablate import parse_vary

    executor = _study_executor(engine, address, cpus_per_task, retries)
    base = _recipe(recipe, overrides)
    factors = parse_vary(vary or [])
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    tracker = _study_tracker(base)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("ablation", total=None)

        def step(done: int, total: int, cell) -> None:
            progress.update(task, total=total, completed=done,
                            description=f"{cell.run_dir.name}{' (reused)' if cell.reused else ''}")

        result = run_ablation(base, factors, seeds=seed_list, design=design, out_dir=out,
                              metric=metric, on_cell=step, tracker=tracker,
                              executor=executor)
    table = Table(title=f"ablation ({result.out_dir})", title_justify="left")
    for factor in result.factors:
        table.add_column(factor)
    for column in (f"{metric} mean", "± std", "seeds"):
        table.add_column(column, justify="right")
    for row in result.table:
        table.add_row(*(str(row[f]) for f in result.factors), f"{row['mean']:.4f}",
                      f"{row['std']:.4f}", str(row["seeds"]))
    console.print(table)
    for factor, levels in result.effects.items():
        text = ", ".join(f"{level}: {delta:+.4f}" for level, delta in levels.items())
        console.print(f"effect of {factor} (vs {next(iter(levels))}): {text}")
    console.print(f"results: {result.out_dir / 'results.json'}  chart: {result.chart}")
    _say_tracked(tracker)
