"""`visiondeck monitor report` and `visiondeck retrain`: drift over the prediction store.

Both read the service's prediction history (`--store URL`, or `--serve-dir DIR` for the
SQLite file a default `visiondeck serve` writes in `.visiondeck/`) for a time range, keep
the rows the given Bundle served, and compare them with the Bundle's reference statistics.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

monitor_app = typer.Typer(help="Drift monitoring over the prediction store.",
                          no_args_is_help=True)

_STORE = typer.Option("--store", help="SQLAlchemy URL of the prediction store")
_SERVE_DIR = typer.Option("--serve-dir", help="the server's data dir (its SQLite store); "
                                              "used when --store is not given")
_BUNDLE = typer.Option("--bundle", "-b", help="the served Bundle (folder or models:/ URI)")
_SINCE = typer.Option(help="start: ISO time, or an age like 7d, 24h, 30m")
_UNTIL = typer.Option(help="end (exclusive): ISO time or an age (default: now)")
_ANY = typer.Option("--any-version", help="use every row in the range, not only those this "
                                          "Bundle served")
_PREFIX = typer.Option(help="table prefix of the store")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str | None) -> datetime | None:
    """ISO-8601 (naive = UTC) or an age before now ("7d", "12h")."""
    from visiondeck.errors import ConfigError

    if text is None:
        return None
    match = _AGE.match(text)
    if match:
        return datetime.now(UTC) - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"cannot read the time {text!r}",
                          hint="give an ISO time (2025-05-01T12:00) or an age (7d, 24h)"
                          ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def served_versions(bundle: Any) -> dict[str, str]:
    """The version string `visiondeck serve` reports for each variant of the Bundle (the
    same hash as `serve.engine.load_model`: bundle.json + the ONNX file, 12 hex digits)."""
    versions = {}
    manifest = (bundle.path / "bundle.json").read_bytes()
    for variant in bundle.variants:
        digest = hashlib.sha256(manifest)
        with open(bundle.onnx_path(variant), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        versions[variant] = digest.hexdigest()[:12]
    return versions


def load_window(store_url: str | None, serve_dir: Path, bundle_source: str,
                since: str | None, until: str | None, any_version: bool, prefix: str):
    """(bundle, reference or None, rows, WindowData or None, notes, versions, store text)."""
    from visiondeck.export.bundle import load_bundle
    from visiondeck.monitor import MonitorError, WindowData, load_reference
    from visiondeck.serve.history.store import PredictionQuery, PredictionStore

    bundle = load_bundle(bundle_source)
    reference = load_reference(bundle)
    url = store_url or f"sqlite:///{serve_dir / 'predictions.db'}"
    if store_url is None and not (serve_dir / "predictions.db").is_file():
        raise MonitorError(f"no prediction store in {serve_dir}",
                           hint="give --store URL, or --serve-dir with the server's data dir")
    store = PredictionStore(url, prefix=prefix)
    start, end = parse_time(since), parse_time(until)
    versions = served_versions(bundle)
    wanted = set(versions.values())
    rows, other = [], {}
    try:
        for record in store.iter_records(PredictionQuery(since=start, until=end)):
            if any_version or record.model_version in wanted:
                rows.append(record)
            else:
                other[record.model_version] = other.get(record.model_version, 0) + 1
    finally:
        store.dispose()
    notes = []
    if other:
        listed = ", ".join(f"{v} ({n})" for v, n in sorted(other.items()))
        notes.append(f"rows of other model versions were left out: {listed} "
                     "(--any-version to include them)")
    window = None
    if reference is not None:
        window = WindowData.from_rows(
            reference, times=[r.created_at.timestamp() for r in rows],
            widths=[r.image_width for r in rows], heights=[r.image_height for r in rows],
            brightness=[r.brightness for r in rows], contrast=[r.contrast for r in rows],
            confidence=[r.confidence for r in rows], predicted=[r.predicted for r in rows],
            labels=[r.label for r in rows],
            projections=[_projection(r, reference.id) for r in rows],
            residuals=[(r.features or {}).get("r") if _projection(r, reference.id) else None
                       for r in rows])
        missing = sum(r.brightness is None for r in rows)
        if missing:
            notes.append(f"{missing} rows predate image statistics in the store: brightness "
                         "and contrast use the other rows")
        projected = sum(_projection(r, reference.id) is not None for r in rows)
        if rows and projected < len(rows):
            notes.append(f"embedding tests use the {projected} rows projected by a server "
                         "monitoring this reference")
    shown = sorted(versions.values()) if not any_version else []
    return bundle, reference, rows, window, notes, shown, _safe_url(url), (start, end)


def _projection(record: Any, reference_id: str) -> list[float] | None:
    features = record.features or {}
    return features.get("z") if features.get("ref") == reference_id else None


def _safe_url(url: str) -> str:
    """The store URL without its password, for the report."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@monitor_app.command("report")
def report(
    bundle: Annotated[str, _BUNDLE],
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")
                   ] = Path("drift-report.html"),
    store: Annotated[str | None, _STORE] = None,
    serve_dir: Annotated[Path, _SERVE_DIR] = Path(".visiondeck"),
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    any_version: Annotated[bool, _ANY] = False,
    table_prefix: Annotated[str, _PREFIX] = "visiondeck_",
    min_window: Annotated[int, typer.Option(help="predictions needed before an alarm")] = 30,
) -> None:
    """Write an HTML drift report of stored predictions against the Bundle's reference.

    Exit 0 when nothing drifted, 3 when a drift test alarms.
    """
    from visiondeck.cli._ui import EXIT_ISSUES, console
    from visiondeck.monitor import DriftThresholds, MonitorError, assess
    from visiondeck.monitor.report import ReportContext, render_report

    loaded, reference, rows, window, notes, versions, url, (start, end) = load_window(
        store, serve_dir, bundle, since, until, any_version, table_prefix)
    if reference is None or window is None:
        raise MonitorError(f"the Bundle {loaded.path} has no reference statistics",
                           hint="re-export the run with `visiondeck export RUN`")
    result = assess(reference, window, DriftThresholds(min_window=min_window))
    context = ReportContext(model=loaded.name, bundle=str(loaded.path), store=url,
                            since=start, until=end, versions=versions, rows=len(rows),
                            notes=notes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(reference, window, result, context), encoding="utf-8")
    alarms = sorted({row.feature for row in result.alarms})
    console.print(f"{len(rows)} predictions · status [bold]{result.status}[/]"
                  + (f" · alarms: {', '.join(alarms)}" if alarms else "")
                  + f" · report: {out}", highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if result.alarm:
        raise typer.Exit(EXIT_ISSUES)


def retrain(
    recipe: Annotated[Path, typer.Argument(help="the recipe the served model was trained with")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    bundle: Annotated[str, _BUNDLE] = "",
    store: Annotated[str | None, _STORE] = None,
    serve_dir: Annotated[Path, _SERVE_DIR] = Path(".visiondeck"),
    uploads: Annotated[Path | None, typer.Option(
        help="the server's VISIONDECK_KEEP_UPLOADS folder (default: that variable)")] = None,
    labelled_dir: Annotated[Path | None, typer.Option(
        help="class folders of the gathered labelled images (default: labelled/<model>)")
                            ] = None,
    min_accuracy: Annotated[float | None, typer.Option(
        help="retrain when live accuracy is below this")] = None,
    on_drift: Annotated[bool, typer.Option("--on-drift", help="retrain when a drift test "
                                           "alarms")] = False,
    min_labelled: Annotated[int, typer.Option(help="labels needed to judge accuracy")] = 20,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    any_version: Annotated[bool, _ANY] = False,
    table_prefix: Annotated[str, _PREFIX] = "visiondeck_",
    force: Annotated[bool, typer.Option("--force", help="retrain even when nothing calls "
                                        "for it")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide and gather the data, "
                                          "but do not train")] = False,
) -> None:
    """Retrain on the data plus newly labelled predictions when accuracy or drift say so.

    Decide (live accuracy, drift) → gather the kept images of labelled predictions → run
    the pipeline.
    """
    import os

    from visiondeck.cli._ui import console
    from visiondeck.config import load_recipe
    from visiondeck.errors import ConfigError
    from visiondeck.monitor import DriftThresholds, MonitorError, assess, live_accuracy
    from visiondeck.monitor.retrain import decide_retrain

    if not bundle:
        raise ConfigError("retrain needs the served Bundle", hint="add --bundle BUNDLE")
    items = list(overrides or [])
    resolved = load_recipe(recipe, items)  # a bad recipe fails before anything is read
    loaded, reference, rows, window, notes, _, _, _ = load_window(
        store, serve_dir, bundle, since, until, any_version, table_prefix)
    if reference is not None and window is not None:
        result = assess(reference, window, DriftThresholds(min_labelled=min_labelled))
        accuracy, alarms = result.live_accuracy, result.alarms
    elif on_drift:
        raise MonitorError(f"the Bundle {loaded.path} has no reference statistics, so drift "
                           "cannot be judged", hint="re-export the run, or use "
                                                    "--min-accuracy alone")
    else:
        accuracy = live_accuracy(((r.predicted, r.label) for r in rows if r.label),
                                 loaded.classes)
        alarms = ()
    decision = decide_retrain(accuracy, alarms, min_accuracy=min_accuracy, on_drift=on_drift,
                              min_labelled=min_labelled)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"{len(rows)} stored predictions, {decision.labelled} labelled, live "
                  f"accuracy {_pct(decision.accuracy)}; drift alarms: "
                  f"{', '.join(decision.drift_alarms) or 'none'}", highlight=False)
    if not decision.retrain and not force:
        console.print("no retrain needed (use --force to retrain anyway)")
        return
    for reason in decision.reasons or ("--force",):
        console.print(f"retrain: {reason}", highlight=False)
    kept = uploads or (Path(os.environ["VISIONDECK_KEEP_UPLOADS"])
                       if os.environ.get("VISIONDECK_KEEP_UPLOADS") else None)
    if kept is None or not kept.is_dir():
        raise MonitorError("the folder of kept uploads is not there" if kept else
                           "where did the server keep the uploaded images?",
                           hint="serve with VISIONDECK_KEEP_UPLOADS=DIR and give --uploads DIR")
    manifest, pipeline_overrides = _gather(resolved, rows, kept, labelled_dir, loaded, items)
    if dry_run:
        console.print(f"dry run: the pipeline would run on {manifest} with "
                      f"{' '.join(pipeline_overrides)}", highlight=False)
        return
    from visiondeck.cli.pipeline_cmd import run_and_report

    run_and_report(recipe, pipeline_overrides, force=True)


def _gather(resolved: Any, rows: list, kept: Path, labelled_dir: Path | None, bundle: Any,
            items: list[str]) -> tuple[Path, list[str]]:
    """Labelled images → class folders; + the recipe's data → a manifest; the overrides."""
    from itertools import chain

    from visiondeck.cli._ui import console
    from visiondeck.data.sources import open_source
    from visiondeck.monitor import MonitorError
    from visiondeck.monitor.retrain import gather_labelled, write_manifest

    folder = labelled_dir or Path("labelled") / bundle.name
    gathered = gather_labelled(rows, kept, folder, bundle.classes)
    console.print(f"gathered {len(gathered.files)} labelled images into {folder} "
                  f"({', '.join(f'{c}: {n}' for c, n in gathered.per_class.items()) or '-'}); "
                  f"{gathered.missing_images} labelled images were not kept by the server"
                  + (f"; labels naming no class: {gathered.unknown_labels}"
                     if gathered.unknown_labels else ""), highlight=False)
    if not gathered.files:
        raise MonitorError("no labelled prediction has its image kept: nothing new to "
                           "train on", hint="label predictions (PUT /predictions/{id}/label) "
                                            "on a server with VISIONDECK_KEEP_UPLOADS set")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    manifest = folder.parent / f"{folder.name}.retrain-{stamp}.csv"
    base = ((f.path, f.label) for f in open_source(resolved.data.source).files())
    total = write_manifest(manifest, chain(base, gathered.files))
    console.print(f"training data: {total} images ({total - len(gathered.files)} from the "
                  f"recipe) listed in {manifest}", highlight=False)
    overrides = [f"data.source={manifest.resolve()}",
                 f"data.prepared={(folder.parent / f'{folder.name}.prepared').resolve()}",
                 f"name={resolved.name}-retrain", *items]
    return manifest, overrides


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"
