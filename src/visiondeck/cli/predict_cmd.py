"""`visiondeck predict BUNDLE PATH...`: files, folders, globs, manifests and S3 prefixes
through a Bundle (what each input names: `visiondeck.locations`).

Results stream as they come (JSON lines and CSV are written per batch, to stdout or to
`--output`, so a pipe or a file sees them at once); the table is printed at the end. Bad
files are listed with their problem, the others are still predicted, and the exit code is
3 when any file failed.

Memory stays flat however many files there are: folders are walked as the predictor asks
for more paths, only a few batches are in flight, and with `--format jsonl|csv` no result
is kept once written (the table, and `--gradcam`, keep what they must show).
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from visiondeck.scale.rows import csv_cells, csv_header, prediction_record

__all__ = ["predict"]

FORMATS = ("table", "jsonl", "csv")


def predict(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or models:/NAME@ALIAS")],
    paths: Annotated[list[str], typer.Argument(help="image files, folders (recursive), "
                                               "globs, manifests (CSV/Parquet with a path "
                                               "column) or s3://BUCKET/PREFIX/")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="classes to show per image")] = 3,
    output_format: Annotated[str, typer.Option("--format", "-f", help="table, jsonl or csv")
                             ] = "table",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="write the JSON lines or CSV to this file, as they come "
        "(format from its suffix unless --format says)")] = None,
    variant: Annotated[str, typer.Option(help="auto (the Bundle's default variant), fp32 "
                                         "or int8")] = "auto",
    batch_size: Annotated[int, typer.Option(help="images per ONNX Runtime call")] = 64,
    workers: Annotated[int | None, typer.Option(help="processes (default: one per core)")
                       ] = None,
    gradcam: Annotated[Path | None, typer.Option(help="write Grad-CAM overlays to this folder "
                                                 "(needs torch)")] = None,
    engine: Annotated[str, typer.Option(help="local, or ray: a Ray cluster scores shards into "
                                        "--output (a folder), resumably "
                                        "(pip install 'visiondeck\\[ray]')")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (--engine ray; "
                                                "default RAY_ADDRESS, else a local Ray)")] = None,
    shard_size: Annotated[int, typer.Option(help="files per output part (--engine ray)")
                          ] = 1000,
) -> None:
    """Predict images with a Bundle; exit code 3 when some files could not be read."""
    from visiondeck.cli._ui import EXIT_ISSUES, console, err_console
    from visiondeck.errors import ConfigError
    from visiondeck.export.predictor import PredictFailure, Predictor
    from visiondeck.locations import iter_inputs, unmatched_inputs

    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine {engine!r}", hint="use local or ray")
    if engine == "ray":
        if gradcam is not None:
            raise ConfigError("--gradcam runs with --engine local only")
        _predict_on_ray(bundle, paths, output, output_format, top_k=top_k, variant=variant,
                        batch_size=batch_size, address=address, shard_size=shard_size,
                        workers=workers)
        return
    if output is not None and output_format == "table":
        output_format = "csv" if output.suffix.lower() == ".csv" else "jsonl"
    if output_format not in FORMATS:
        raise ConfigError(f"unknown format {output_format!r}", hint=f"use one of {FORMATS}")
    if top_k < 1 or batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be at least 1")
    predictor = Predictor(bundle, variant=variant, top_k=top_k)
    kept: list[Any] = []  # what the table or Grad-CAM needs at the end; nothing otherwise
    done = failed = 0
    walked: set[str] = set()  # walked paths taken but not yet batched: at most one batch

    def files() -> Iterator[str]:
        for path, from_walk in iter_inputs(paths):
            if from_walk:
                walked.add(path)
            yield path

    def skippable(path: str) -> bool:  # asked once per path, as the predictor batches it
        if path in walked:
            walked.discard(path)
            return True
        return False

    started = time.perf_counter()
    with _open_output(output) as stream:
        writer = _Writer(output_format, top_k, stream,
                         labels=predictor.classes if predictor.bundle.multilabel else None)
        writer.start()
        unmatched = [PredictFailure(raw, "no_match", f"{raw}: matched no file")
                     for raw in unmatched_inputs(paths)]
        results = predictor.predict_files(files(), top_k=top_k, batch_size=batch_size,
                                          workers=workers, skip_non_images=skippable)
        for result in _chain(unmatched, results):
            writer.write(result)
            if result.ok:
                done += 1
            else:
                failed += 1
            if output_format == "table" or (gradcam is not None and result.ok):
                kept.append(result)
        writer.flush()
    elapsed = time.perf_counter() - started
    if output_format == "table":
        console.print(_table(kept, top_k, predictor.bundle.name))
    rate = f", {done / elapsed:,.0f} images/s" if elapsed > 0 and done else ""
    where = f" → {output}" if output is not None else ""
    err_console.print(f"{done} predicted, {failed} failed{rate}{where}", highlight=False)
    if gradcam is not None:
        _write_gradcam(predictor, [r.source for r in kept if r.ok], gradcam)
    if failed:
        raise typer.Exit(EXIT_ISSUES)


def _predict_on_ray(bundle: str, paths: list[str], output: Path | None, output_format: str,
                    **options: Any) -> None:
    """--engine ray: parts and predictions.parquet (+ .csv with --format csv) in --output."""
    from visiondeck.cli._ui import EXIT_ISSUES, err_console
    from visiondeck.errors import ConfigError
    from visiondeck.locations import iter_inputs, unmatched_inputs
    from visiondeck.scale.ray_predict import predict_on_ray

    if output is None:
        raise ConfigError("--engine ray writes to a folder", hint="give --output FOLDER")
    if output_format not in ("table", "csv", "jsonl"):
        raise ConfigError(f"unknown format {output_format!r}", hint=f"use one of {FORMATS}")
    workers = options.pop("workers")
    result = predict_on_ray(bundle, iter_inputs(paths), output, unmatched=unmatched_inputs(paths),
                            actors=workers, write_csv=output_format == "csv", **options)
    err_console.print(f"{result.scored} predicted, {result.failed} failed, "
                      f"{result.already_done} already done → {result.parquet}", highlight=False)
    if result.total_failed:
        raise typer.Exit(EXIT_ISSUES)


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


@contextlib.contextmanager
def _open_output(path: Path | None) -> Iterator[TextIO]:
    """stdout, or `path` opened for writing (kept on failure: partial results are results)."""
    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        yield handle


class _Writer:
    """Streams JSON lines or CSV rows as results arrive (the table waits)."""

    def __init__(self, fmt: str, top_k: int, stream: TextIO,
                 labels: list[str] | None = None) -> None:
        self.fmt = fmt
        self.top_k = top_k
        self.labels = labels  # a multi-label Bundle's classes: a column pair per label
        self.stream = stream
        self.csv = csv.writer(stream) if fmt == "csv" else None
        self.count = 0

    def start(self) -> None:
        if self.csv is not None:
            self.csv.writerow(csv_header(self.top_k, labels=self.labels))

    def write(self, result: Any) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(result.to_dict()) + "\n")
        elif self.csv is not None:
            self.csv.writerow(csv_cells(prediction_record(result, self.top_k,
                                                          labels=self.labels)))
        else:
            return
        self.count += 1
        if self.count % 64 == 0:  # a batch at a time: a pipe sees results as they come
            self.flush()

    def flush(self) -> None:
        self.stream.flush()


def _table(results: list[Any], top_k: int, title: str) -> Any:
    from rich.table import Table

    table = Table(title=f"predictions — {title}", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("prediction")
    table.add_column("p", justify="right")
    if top_k > 1:
        table.add_column(f"top {top_k}")
    for r in results:
        if r.ok and hasattr(r, "scores"):  # multi-label: every label, ✓ when it passes
            cells = [r.source or "-", f"[bold]{r.label or '(none)'}[/]", f"{r.probability:.1%}"]
            if top_k > 1:
                cells.append(", ".join(f"{s.label} {s.probability:.1%}{' ✓' if s.positive else ''}"
                                       for s in r.scores))
        elif r.ok:
            label = f"[yellow]unknown[/] ({r.label})" if r.unknown else f"[bold]{r.label}[/]"
            cells = [r.source or "-", label, f"{r.probability:.1%}"]
            if top_k > 1:
                cells.append(", ".join(f"{name} {p:.1%}" for name, p in r.topk))
        else:
            cells = [r.source or "-", f"[red]{r.problem}[/]", "",
                     *([r.message] if top_k > 1 else [])]
        table.add_row(*cells)
    return table


def _write_gradcam(predictor: Any, sources: list[str], out_dir: Path) -> None:
    from visiondeck.cli._ui import err_console

    try:
        from visiondeck.explain import explain_files, load_model_from_bundle
    except ImportError as exc:  # pragma: no cover - explain is part of the package
        err_console.print(f"[yellow]Grad-CAM unavailable:[/] {exc}")
        return
    loaded = load_model_from_bundle(predictor.bundle.path)
    written = explain_files(loaded, sources, out_dir)
    count = sum(1 for item in written if item.output is not None)
    err_console.print(f"{count} Grad-CAM overlay(s) written to {out_dir}", highlight=False)
