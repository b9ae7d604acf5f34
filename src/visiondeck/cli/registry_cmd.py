"""`visiondeck runs list/show/diff`, `ui`, `register` and `promote`: tracking and registry.

Every command reads the same store training wrote to: `--tracking-uri`, else
$MLFLOW_TRACKING_URI, else the embedded store in `RUNS_DIR/mlruns` (default `runs/`).
MLflow is imported inside the commands, never at `--help`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

runs_app = typer.Typer(help="Tracked runs (MLflow): list, show, diff.", no_args_is_help=True)

_URI = typer.Option("--tracking-uri", help="MLflow tracking URI (default: "
                    "$MLFLOW_TRACKING_URI, else the embedded store in RUNS_DIR/mlruns)")
_RUNS = typer.Option("--runs-dir", help="folder of the run folders (holds mlruns/)")
TrackingUri = Annotated[str | None, _URI]
RunsDir = Annotated[Path, _RUNS]
_PREFERRED = ("best_val_acc", "val_acc", "val_loss", "test_accuracy", "test_macro_f1")


def _store(tracking_uri: str | None, runs_dir: Path):
    from visiondeck.registry.store import open_store

    return open_store(tracking_uri, runs_dir, must_exist=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "[dim]—[/]"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def _verdict(text: str) -> str:
    colour = {"passed": "green", "completed": "green", "failed_gate": "red",
              "interrupted": "yellow", "running": "cyan", "failed": "red"}.get(text)
    return f"[{colour}]{text}[/]" if colour else text


@runs_app.command("list")
def list_runs(
    tracking_uri: TrackingUri = None,
    runs_dir: RunsDir = Path("runs"),
    experiment: Annotated[str | None, typer.Option(help="only this experiment")] = None,
    limit: Annotated[int, typer.Option(help="newest N runs")] = 30,
    nested: Annotated[bool, typer.Option("--nested/--no-nested", help="show the cells and "
                                         "folds of ablations and CVs under their parent")
                      ] = True,
) -> None:
    """Tracked runs, newest first, with their verdict and key metrics; an ablation's cells
    and a cross-validation's folds are listed indented under their parent run."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.registry.runs import list_runs as query

    store = _store(tracking_uri, runs_dir)
    runs = query(store, experiment=experiment, limit=limit, nested=nested)
    if not runs:
        console.print(f"no runs tracked in {store.display} yet")
        return
    columns = [m for m in _PREFERRED if any(m in r.metrics for r in runs)][:4]
    kinds = len({r.kind for r in runs}) > 1  # a kind column only when runs differ
    table = Table(title=f"runs in {store.display}", title_justify="left")
    table.add_column("run", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("experiment")
    if kinds:
        table.add_column("kind")
    table.add_column("verdict")
    table.add_column("started", no_wrap=True)
    for name in columns:
        table.add_column(name, justify="right")
    for run in runs:
        started = run.start_time.astimezone().strftime("%m-%d %H:%M") if run.start_time else ""
        label = f"{'  ' * max(0, run.depth - 1)}↳ {run.name}" if run.parent_id else run.name
        if not nested and run.children:
            label += f" [dim](+{run.children} nested)[/]"
        cells = [label, run.short_id, run.experiment, *([run.kind] if kinds else []),
                 _verdict(run.verdict), started]
        table.add_row(*cells, *(_fmt(run.metrics.get(m)) for m in columns))
    console.print(table)


@runs_app.command("show")
def show_run(
    run: Annotated[str, typer.Argument(help="run folder, run id (or prefix) or run name")],
    tracking_uri: TrackingUri = None,
    runs_dir: RunsDir = Path("runs"),
    params: Annotated[bool, typer.Option(help="list the recipe's params")] = True,
) -> None:
    """One run: verdict, metrics per epoch, final metrics, recipe, tags, artifacts."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.registry.runs import find_run, list_artifacts, metric_history

    summary = find_run(_store(tracking_uri, runs_dir), run)
    store = summary.source or _store(tracking_uri, runs_dir)
    duration = f"{summary.duration_s:.1f} s" if summary.duration_s is not None else "—"
    console.print(f"[bold]{summary.name}[/]  id {summary.run_id}  experiment "
                  f"{summary.experiment}  {_verdict(summary.verdict)}  ({summary.status}, "
                  f"{duration})")
    if summary.run_dir:
        console.print(f"folder: {summary.run_dir}")
    epoch_keys = [k for k in ("train_loss_epoch", "train_acc", "val_loss", "val_acc")
                  if k in summary.metrics]
    histories = {k: dict(metric_history(store, summary.run_id, k)) for k in epoch_keys}
    steps = sorted({s for h in histories.values() for s in h})
    if len(steps) > 1:
        per_epoch = Table(title="per epoch", title_justify="left")
        per_epoch.add_column("epoch", justify="right")
        for key in epoch_keys:
            per_epoch.add_column(key, justify="right")
        for step in steps:
            per_epoch.add_row(str(step), *(_fmt(histories[k].get(step)) for k in epoch_keys))
        console.print(per_epoch)
    metrics = Table(title="metrics (latest)", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key in sorted(summary.metrics):
        metrics.add_row(key, _fmt(summary.metrics[key]))
    console.print(metrics)
    if params and summary.params:
        recipe = Table(title="params (resolved recipe)", title_justify="left")
        recipe.add_column("key")
        recipe.add_column("value")
        for key in sorted(summary.params):
            recipe.add_row(key, summary.params[key])
        console.print(recipe)
    tags = Table(title="tags", title_justify="left")
    tags.add_column("tag")
    tags.add_column("value")
    for key in sorted(summary.tags):
        if key.startswith("visiondeck.") or key == "mlflow.source.git.commit":
            tags.add_row(key, summary.tags[key])
    console.print(tags)
    files = list_artifacts(store, summary.run_id)
    if files:
        console.print("artifacts: " + ", ".join(path for path, _ in files))


@runs_app.command("diff")
def diff(
    runs: Annotated[list[str], typer.Argument(help="two or more runs (folder, id or name)")],
    tracking_uri: TrackingUri = None,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Runs side by side: every metric (best in green) and the recipe keys that differ."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.registry.errors import RegistryError
    from visiondeck.registry.runs import diff_runs, find_run

    if len(runs) < 2:
        raise RegistryError("give at least two runs to compare",
                            hint="e.g. visiondeck runs diff runs/a runs/b")
    store = _store(tracking_uri, runs_dir)
    result = diff_runs([find_run(store, ref) for ref in runs])
    headers = [f"{r.name} ({r.short_id})" for r in result.runs]
    metrics = Table(title="metrics", title_justify="left")
    metrics.add_column("metric")
    for header in headers:
        metrics.add_column(header, justify="right")
    for key, values, best in result.metrics:
        metrics.add_row(key, *(f"[bold green]{_fmt(v)}[/]" if i == best else _fmt(v)
                               for i, v in enumerate(values)))
    console.print(metrics)
    if result.params:
        recipe = Table(title=f"recipe differences ({result.same_params} keys identical)",
                       title_justify="left")
        recipe.add_column("key")
        for header in headers:
            recipe.add_column(header)
        for key, values in result.params:
            recipe.add_row(key, *(_fmt(v) for v in values))
        console.print(recipe)
    else:
        console.print(f"same recipe ({result.same_params} keys identical)")


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for a store (embedded artifacts served from disk)."""
    from visiondeck.registry.store import ARTIFACTS_DIR, sqlite_path

    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", host, "--port", str(port)]
    db = sqlite_path(uri)
    if db is not None:
        command += ["--artifacts-destination", (db.parent / ARTIFACTS_DIR).as_uri()]
    return command


def ui(
    tracking_uri: TrackingUri = None,
    runs_dir: RunsDir = Path("runs"),
    host: Annotated[str, typer.Option(help="interface to bind (keep 127.0.0.1 unless "
                                      "you mean to share it)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port of the UI")] = 5000,
) -> None:
    """Open the MLflow UI on the local store (a tracking server already has its own UI)."""
    import subprocess

    from visiondeck.cli._ui import console
    from visiondeck.registry.store import open_store

    store = open_store(tracking_uri, runs_dir, must_exist=True)
    if store.uri.startswith(("http://", "https://")):
        console.print(f"{store.display} is a tracking server: open it in your browser")
        return
    console.print(f"MLflow UI for {store.display} on http://{host}:{port} (Ctrl-C stops it)")
    try:
        code = subprocess.call(ui_command(store.uri, host, port))
    except KeyboardInterrupt:
        code = 0
    if code:
        raise typer.Exit(code)


def register(
    target: Annotated[Path, typer.Argument(help="run folder (its bundle/) or Bundle folder")],
    name: Annotated[str, typer.Option("--name", help="registered model name")],
    force: Annotated[bool, typer.Option("--force", help="register even if the run did not "
                                        "pass its quality or evaluation gate (recorded)")
                     ] = False,
    description: Annotated[str | None, typer.Option(help="version description")] = None,
    tracking_uri: TrackingUri = None,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Register a Bundle as a new model version, only past the quality gate.

    Exit 10 when refused: a failed training gate (train.min_val_accuracy) or evaluation gate
    (`evaluate --gate` / train.gate) without --force.
    """
    from visiondeck.cli._ui import console
    from visiondeck.registry.models import register as do_register

    done = do_register(target, name, force=force, tracking_uri=tracking_uri,
                       runs_root=runs_dir, description=description)
    forced = " [yellow](forced past the gate)[/]" if done.forced else ""
    console.print(f"registered [bold]models:/{done.name}/{done.version}[/]{forced}")
    console.print(f"  gate: {done.gate}   source: {done.source}   store: {done.store}")
    console.print(f"  promote it: visiondeck promote {done.name} {done.version} "
                  "--alias champion")


def promote(
    name: Annotated[str, typer.Argument(help="registered model name")],
    version: Annotated[int, typer.Argument(help="version to promote")],
    alias: Annotated[str, typer.Option(help="alias to set (champion, challenger...)")]
    = "champion",
    force: Annotated[bool, typer.Option("--force", help="promote even if worse than the "
                                        "current champion (recorded)")] = False,
    metric: Annotated[str | None, typer.Option(help="metric that decides (default: macro_f1, "
                                               "else accuracy)")] = None,
    tracking_uri: TrackingUri = None,
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Point an alias at a model version; a worse champion is refused (exit 10)."""
    from visiondeck.cli._ui import console
    from visiondeck.registry.models import promote as do_promote

    done = do_promote(name, version, alias=alias, force=force, metric=metric,
                      tracking_uri=tracking_uri, runs_root=runs_dir)
    console.print(f"[bold]models:/{done.name}@{done.alias}[/] → version {done.version}"
                  + (f" (was {done.previous})" if done.previous else ""))
    if done.metric and done.value is not None:
        console.print(f"  {done.metric}: {done.value:.4f} vs {done.previous_value:.4f} "
                      "for the previous champion")
    if done.forced:
        console.print(f"  [yellow]forced:[/] {done.reason}")
