"""`visiondeck predict BUNDLE PATH...`: files, folders and globs through a Bundle.

Results stream as they come (JSON lines and CSV are written per batch, so a pipe sees them
at once); the table is printed at the end. Bad files are listed with their problem, the
others are still predicted, and the exit code is 3 when any file failed.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["collect_files", "predict"]

FORMATS = ("table", "jsonl", "csv")


def collect_files(inputs: list[str]) -> tuple[list[str], set[str], list[str]]:
    """(files to predict, those found by walking a folder, inputs that matched nothing).

    Folders are walked recursively (hidden entries skipped); what they hold that is not an
    image at all (a README beside the pictures) is skipped by the predictor, not reported,
    while a file named explicitly is always reported. Globs (`*`, `?`, `[`, `**`) are
    expanded when no file has that literal name. Order is kept, duplicates dropped.
    """
    files: list[str] = []
    walked: set[str] = set()
    missing: list[str] = []
    seen: set[str] = set()

    def add(path: str, *, from_walk: bool = False) -> None:
        if path not in seen:
            seen.add(path)
            files.append(path)
            if from_walk:
                walked.add(path)

    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            for found in _walk(path):
                add(found, from_walk=True)
        elif path.exists() or not glob.has_magic(raw):
            add(str(path))  # a missing plain path is reported by the predictor
        else:
            matches = sorted(glob.glob(os.path.expanduser(raw), recursive=True))
            if not matches:
                missing.append(raw)
            for match in matches:
                if Path(match).is_dir():
                    for found in _walk(Path(match)):
                        add(found, from_walk=True)
                else:
                    add(match)
    return files, walked, missing


def _walk(root: Path) -> Iterator[str]:
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield os.path.join(folder, name)


def predict(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or models:/NAME@ALIAS")],
    paths: Annotated[list[str], typer.Argument(help="image files, folders (recursive) or "
                                               "globs")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="classes to show per image")] = 3,
    output_format: Annotated[str, typer.Option("--format", "-f", help="table, jsonl or csv")
                             ] = "table",
    variant: Annotated[str, typer.Option(help="fp32 or int8")] = "fp32",
    batch_size: Annotated[int, typer.Option(help="images per ONNX Runtime call")] = 64,
    workers: Annotated[int | None, typer.Option(help="processes (default: one per core)")
                       ] = None,
    gradcam: Annotated[Path | None, typer.Option(help="write Grad-CAM overlays to this folder "
                                                 "(needs torch)")] = None,
) -> None:
    """Predict images with a Bundle; exit code 3 when some files could not be read."""
    from visiondeck.cli._ui import EXIT_ISSUES, console, err_console
    from visiondeck.errors import ConfigError
    from visiondeck.export.predictor import PredictFailure, Predictor

    if output_format not in FORMATS:
        raise ConfigError(f"unknown format {output_format!r}", hint=f"use one of {FORMATS}")
    if top_k < 1 or batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be at least 1")
    predictor = Predictor(bundle, variant=variant, top_k=top_k)
    files, walked, unmatched = collect_files(paths)
    started = time.perf_counter()
    results: list[Any] = [PredictFailure(raw, "no_match", f"{raw}: matched no file")
                          for raw in unmatched]
    writer = _Writer(output_format, top_k)
    writer.start()
    for result in results:
        writer.write(result)
    for result in predictor.predict_files(files, top_k=top_k, batch_size=batch_size,
                                          workers=workers, skip_non_images=walked):
        results.append(result)
        writer.write(result)
    writer.flush()
    elapsed = time.perf_counter() - started
    if output_format == "table":
        console.print(_table(results, top_k, predictor.bundle.name))
    failures = [r for r in results if not r.ok]
    done = len(results) - len(failures)
    rate = f", {done / elapsed:,.0f} images/s" if elapsed > 0 and done else ""
    err_console.print(f"{done} predicted, {len(failures)} failed{rate}", highlight=False)
    if gradcam is not None:
        _write_gradcam(predictor, [r.source for r in results if r.ok], gradcam)
    if failures:
        raise typer.Exit(EXIT_ISSUES)


class _Writer:
    """Streams JSON lines or CSV rows to stdout as results arrive (the table waits)."""

    def __init__(self, fmt: str, top_k: int) -> None:
        self.fmt = fmt
        self.top_k = top_k
        self.csv = csv.writer(sys.stdout) if fmt == "csv" else None
        self.count = 0

    def start(self) -> None:
        if self.csv is not None:
            header = ["source", "label", "probability", "unknown", "error"]
            for i in range(1, self.top_k + 1):
                header += [f"top{i}_label", f"top{i}_probability"]
            self.csv.writerow(header)

    def write(self, result: Any) -> None:
        if self.fmt == "jsonl":
            sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        elif self.csv is not None:
            if result.ok:
                row = [result.source, result.label, f"{result.probability:.6f}",
                       str(result.unknown).lower(), ""]
                for label, p in result.topk:
                    row += [label, f"{p:.6f}"]
                row += [""] * (5 + 2 * self.top_k - len(row))
            else:
                row = [result.source, "", "", "", f"{result.problem}: {result.message}"]
                row += [""] * (2 * self.top_k)
            self.csv.writerow(row)
        else:
            return
        self.count += 1
        if self.count % 64 == 0:  # a batch at a time: a pipe sees results as they come
            self.flush()

    def flush(self) -> None:
        sys.stdout.flush()


def _table(results: list[Any], top_k: int, title: str) -> Any:
    from rich.table import Table

    table = Table(title=f"predictions — {title}", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("prediction")
    table.add_column("p", justify="right")
    if top_k > 1:
        table.add_column(f"top {top_k}")
    for r in results:
        if r.ok:
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
