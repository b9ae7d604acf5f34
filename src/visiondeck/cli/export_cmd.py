"""`visiondeck export RUN` and `visiondeck bench BUNDLE`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    run: Annotated[Path, typer.Argument(help="finished run folder (what `visiondeck train` "
                                        "printed)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle folder "
                                             "(default: RUN/bundle)")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="also write an INT8 model "
                                       "(static, calibrated on training images)")] = False,
    prune: Annotated[float | None, typer.Option(help="prune this share of weights (e.g. 0.3) "
                                                "and fine-tune before export")] = None,
    prune_method: Annotated[str, typer.Option(help="unstructured (global L1: zeroes weights) "
                                              "or structured (removes conv channels: smaller "
                                              "and faster)")] = "unstructured",
    prune_steps: Annotated[int, typer.Option(help="fine-tuning steps after pruning")] = 200,
    prune_distill: Annotated[bool, typer.Option(help="fine-tune the pruned network on the "
                                                "unpruned one's answers (distillation, warm-up "
                                                "+ cosine); off: labels only, warm-up + "
                                                "cosine (measured better)")] = False,
    parity_images: Annotated[int, typer.Option(help="validation images for the parity "
                                               "check")] = 64,
    tolerance: Annotated[float, typer.Option(help="max |Δ probability| allowed vs "
                                             "PyTorch")] = 1e-3,
    exporter: Annotated[str, typer.Option(help="torchscript (fast) or dynamo")] = "torchscript",
    sweep: Annotated[bool, typer.Option("--sweep", help="measure every variant (FP32, each "
                                        "INT8 setting, pruning ratios, OpenVINO if installed) "
                                        "in one table; the Bundle serves the fastest one within "
                                        "--max-loss of FP32 by default")] = False,
    sweep_prune: Annotated[str, typer.Option(help="--sweep: pruning ratios, comma-separated "
                                             "(empty for none)")] = "0.25,0.5",
    max_loss: Annotated[float, typer.Option(help="accuracy (and agreement with FP32) a "
                                            "variant may lose and still be recommended")] = 0.01,
) -> None:
    """Export a run as a Bundle: model.onnx (+ int8), weights.safetensors, bundle.json."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.export.onnx_export import export_run

    if sweep:
        _sweep(run, out, sweep_prune, prune_steps, max_loss, _finetune(prune_distill))
        return

    with console.status("exporting") as status:
        result = export_run(run, out, int8=int8, prune=prune, prune_method=prune_method,
                            prune_steps=prune_steps, prune_finetune=_finetune(prune_distill),
                            parity_images=parity_images,
                            tolerance=tolerance, exporter=exporter,
                            log=lambda msg: status.update(msg))
    parity = result.parity
    console.print(f"parity vs PyTorch on {parity['n_images']} {parity['source']} images: "
                  f"max |Δp| [bold]{parity['max_abs_diff']:.2e}[/], top-1 agreement "
                  f"[bold]{parity['top1_agreement']:.2%}[/] ({result.exporter} exporter)")
    table = Table(title=f"Bundle {result.path}", title_justify="left")
    for column in ("variant", "file", "size", "test accuracy", "note"):
        table.add_column(column, justify="right" if column in ("size", "test accuracy")
                         else "left")
    for name, entry in result.variants.items():
        settings = entry.get("settings") or {}
        note = " ".join(v for v in (entry.get("method"), settings.get("name")) if v)
        if entry.get("recommended") is False:
            note += f" — not recommended: loses {entry.get('accuracy_lost')} vs FP32"
        table.add_row(name, entry["file"], _size(entry["bytes"]), _pct(entry.get("accuracy")),
                      note)
    console.print(table)
    choice = _int8_choice(result.variants.get("int8") or {})
    if choice is not None:
        console.print(choice)
    if result.pruning:
        p = result.pruning
        size = (f"{p['parameters_before']:,} → {p['parameters_after']:,} parameters"
                if p["method"] == "structured" else f"sparsity {p['sparsity']:.1%}")
        console.print(f"pruned {p['amount']:.0%} ({p['method']}): {size}, "
                      f"val accuracy {_pct(p['val_accuracy_before'])} → "
                      f"{_pct(p['val_accuracy_pruned'])} after pruning → "
                      f"{_pct(p['val_accuracy_after'])} after {p['steps']} fine-tuning steps")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    _track(run, result.path)
    console.print(f"done in {result.duration_s:.1f} s")


def _int8_choice(entry: dict) -> object | None:
    """The INT8 candidates export measured, and which it kept (`int8_choice`), as a table."""
    from rich.table import Table

    selection = entry.get("selection") or {}
    if not selection.get("candidates"):
        return None
    kept = (entry.get("settings") or {}).get("name")
    table = Table(title=f"INT8 candidates on {selection['images']} {selection['source']} "
                  f"images — kept: {selection.get('rule', 'the closest to FP32')}",
                  title_justify="left")
    for column in ("settings", "agreement", "cosine", "CPU ms/image", "as faithful", "kept"):
        table.add_column(column, justify="left" if column == "settings" else "right",
                         no_wrap=column == "settings")
    for row in selection["candidates"]:
        cosine = row.get("embedding_cosine")
        ms = row.get("cpu_ms_per_image")
        close = row.get("as_close_as_closest")
        table.add_row(row["settings"], _pct(row.get("top1_agreement")),
                      "—" if cosine is None else f"{cosine:.4f}",
                      "—" if ms is None else f"{ms:.2f}",
                      "—" if close is None else ("yes" if close else "no"),
                      "✓" if row["settings"] == kept else "")
    return table


def _finetune(distill: bool) -> object:
    """The pruned network's fine-tune: distillation, or prune's default (labels only)."""
    from visiondeck.export.prune import DEFAULT_FINETUNE, FinetuneConfig

    return FinetuneConfig() if distill else DEFAULT_FINETUNE


def _sweep(run: Path, out: Path | None, ratios: str, steps: int, max_loss: float,
           finetune: object = None) -> None:
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.errors import ConfigError
    from visiondeck.export.sweep import sweep_run

    try:
        shares = [float(v) for v in ratios.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep-prune takes ratios like 0.25,0.5, not {ratios!r}") from None
    if any(not 0 < v < 1 for v in shares):
        raise ConfigError("--sweep-prune ratios must be between 0 and 1")
    with console.status("sweeping") as status:
        report = sweep_run(run, out, prune_ratios=shares, prune_steps=steps, max_loss=max_loss,
                           prune_finetune=finetune, log=lambda msg: status.update(msg))
    table = Table(title=f"{report.bundle} — every variant, {report.threads} thread(s)",
                  title_justify="left")
    for column in ("variant", "engine", "size", "accuracy", "agreement", "p50 ms", "p99 ms",
                   "images/s", "", "detail"):
        table.add_column(column, justify="left" if column in ("variant", "engine", "", "detail")
                         else "right")
    for row in report.rows:
        marks = ("★" if row.pareto else "") + (" served" if row.default else "") + (
            "" if row.recommended else " not recommended")
        table.add_row(row.variant, row.engine, _size(row.bytes), _pct(row.accuracy),
                      _pct(row.agreement), f"{row.p50_ms:.2f}", f"{row.p99_ms:.2f}",
                      f"{row.images_per_s:,.0f}", marks.strip(), row.detail)
    console.print(f"latency: batch 1; images/s: batch {report.batch_size}, median of "
                  f"{report.rounds} interleaved rounds; ★ Pareto front (accuracy vs images/s); "
                  f"recommended: loses ≤ {report.max_loss:.0%} vs FP32", style="dim")
    console.print(table)
    console.print(f"the Bundle serves [bold]{report.default_variant}[/] by default "
                  f"(bundle.json default_variant; sweep.json has every figure)")


def _track(run_dir: Path, bundle_dir: Path) -> None:
    """Attach the Bundle to the run's MLflow run when training linked one (mlflow.json)."""
    if not (Path(run_dir) / "mlflow.json").is_file():
        return
    try:
        from visiondeck.registry.runlog import log_bundle
    except ImportError:  # the track extra is not installed: the Bundle stays local
        return
    artifact = log_bundle(run_dir, bundle_dir)
    if artifact is not None:
        from visiondeck.cli._ui import console

        console.print(f"logged on the MLflow run as {artifact.source}")


def bench(
    bundle: Annotated[str, typer.Argument(help="Bundle folder or models:/NAME@ALIAS")],
    seconds: Annotated[float, typer.Option(help="time per measurement")] = 2.0,
    batch_sizes: Annotated[str, typer.Option(help="comma-separated batch sizes for "
                                             "throughput")] = "1,8,32,64,128",
    threads: Annotated[int | None, typer.Option(help="threads (default: all cores)")] = None,
    torch: Annotated[bool, typer.Option("--torch/--no-torch", help="include PyTorch "
                                        "eager")] = True,
    out: Annotated[Path | None, typer.Option(help="where to save the JSON "
                                             "(default: BUNDLE/bench.json)")] = None,
) -> None:
    """Latency (p50/p95/p99 at batch 1) and best throughput per engine, one table."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.errors import ConfigError
    from visiondeck.export.bench import bench_bundle, save_bench

    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--batch-sizes must be integers, not {batch_sizes!r}",
                          hint="e.g. --batch-sizes 1,8,32") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError("--batch-sizes needs at least one positive size")
    with console.status("benchmarking") as status:
        report = bench_bundle(bundle, batch_sizes=sizes, seconds=seconds, threads=threads,
                              torch=torch, log=lambda msg: status.update(f"benchmarking {msg}"))
    saved = save_bench(report, out)
    table = Table(title=f"{report.bundle} — {report.machine['processor']}, "
                  f"{report.threads} thread(s)", title_justify="left")
    for column in ("engine", "size", "accuracy", "p50 ms", "p95 ms", "p99 ms", "batch",
                   "images/s"):
        table.add_column(column, justify="left" if column == "engine" else "right",
                         no_wrap=True)
    for row in report.rows:
        table.add_row(_ENGINES.get(row.engine, row.engine), _size(row.bytes),
                      _pct(row.accuracy), f"{row.p50_ms:.2f}", f"{row.p95_ms:.2f}",
                      f"{row.p99_ms:.2f}", str(row.best_batch), f"{row.images_per_s:,.0f}")
    console.print("latency: batch 1; images/s: at the best batch size; accuracy: test split "
                  "(measured at export)", style="dim")
    console.print(table)
    console.print(f"saved {saved}")


_ENGINES = {"pytorch": "PyTorch", "onnxruntime-fp32": "ORT FP32",
            "onnxruntime-int8": "ORT INT8"}


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"
