"""Export and engine speed: `visiondeck export --int8` + `visiondeck bench` on two models.

    .venv/bin/python benchmarks/bench_export.py [--fashion-run RUN] [--lite0-run RUN]
    .venv/bin/python benchmarks/bench_export.py --sweep [--fashion-run RUN] [--skip-lite0]

1. The Fashion-MNIST model (28×28 grey): the run given, else the one bench_predict.py trained
   (benchmarks/_work/runs/bench-predict), exported with INT8.
2. EfficientNet-Lite0 at 224×224 RGB from its offline ImageNet weights: the run given, else a
   short head-only fine-tune here on a 60-per-class slice of the bundled Fashion-MNIST sample
   (upscaled; the point is the engine speed of a real 224 px network, not its accuracy).

Each Bundle is exported (timed) and benchmarked with `bench_bundle` (PyTorch eager, ONNX
Runtime FP32 and INT8); with `--sweep`, `visiondeck export --sweep` runs instead (every INT8
setting, structured pruning at --sweep-prune ratios, OpenVINO when installed; one table
with the Pareto front and the variant the Bundle serves). The tables are printed and
everything is written to
benchmarks/results/export.json. Load averages are recorded: the figures move with what else
runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from rich.console import Console

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
RESULTS = HERE / "results" / "export.json"


def _lite0_run(console: Console, source: str = "sample", per_class: int = 60) -> Path:
    """A Lite0 head fine-tune on `per_class` images of each class of a built-in set
    (upscaled to 224 px), kept in _work/runs."""
    from visiondeck.config import load_recipe
    from visiondeck.data.materialize import materialize
    from visiondeck.train.runner import train

    data = WORK / f"{source}-{per_class}"
    subsets = ["train"] if source != "sample" else None
    materialize(source, data, subsets=subsets, limit_per_class=per_class, progress=False)
    if subsets:  # written as data/train/<class>/: the class folders are one level down
        data = data / "train"
    name = "bench-lite0" if (source, per_class) == ("sample", 60) else f"bench-lite0-{source}"
    shutil.rmtree(WORK / "runs" / name, ignore_errors=True)
    console.print("fine-tuning the EfficientNet-Lite0 head at 224 px (4 epochs)")
    recipe = load_recipe(ROOT / "configs" / "transfer_lite0.yaml", [
        f"data.source={data}", "data.augment=none", "data.cache=off", "train.epochs=4",
        "train.lr=0.005", "train.freeze=backbone", "train.warmup_epochs=0",
        "train.min_val_accuracy=null", f"output_dir={WORK / 'runs'}", f"name={name}"])
    return train(recipe, progress=False).run_dir


def _one(name: str, run: Path, seconds: float, console: Console, reexport: bool) -> dict:
    from visiondeck.export.bench import bench_bundle, save_bench
    from visiondeck.export.onnx_export import ExportResult, export_run

    start = time.perf_counter()
    existing = run / "bundle"
    if (existing / "bundle.json").is_file() and not reexport:
        from visiondeck.export.bundle import load_bundle

        bundle = load_bundle(existing)
        result = ExportResult(existing, bundle, bundle.info["parity"], bundle.variants,
                              bundle.info.get("pruning"), bundle.info["export"]["exporter"],
                              float("nan"), list(bundle.info["export"]["notes"]))
        console.print(f"  reusing {existing} (--reexport to export again)")
    else:
        result = export_run(run, int8=True, log=lambda msg: console.print(f"  {msg}"))
    export_s = time.perf_counter() - start if result.duration_s == result.duration_s else None
    report = bench_bundle(result.path, seconds=seconds, batch_sizes=(1, 8, 32, 64),
                          log=lambda msg: console.print(f"  bench {msg}"))
    save_bench(report)
    took = "reused" if export_s is None else f"{export_s:.1f} s"
    console.print(f"[bold]{name}[/]: export {took}, parity max |Δp| "
                  f"{result.parity['max_abs_diff']:.1e}")
    for row in report.rows:
        console.print(f"  {row.engine:18} {row.bytes / 1e6:7.2f} MB  acc "
                      f"{'—' if row.accuracy is None else f'{row.accuracy:.2%}':>7}  p50 "
                      f"{row.p50_ms:8.3f} ms  p95 {row.p95_ms:8.3f}  p99 {row.p99_ms:8.3f}  "
                      f"best batch {row.best_batch:3d}: {row.images_per_s:9,.0f} img/s")
    seconds_taken = None if export_s is None else round(export_s, 1)
    return {"run": str(run), "bundle": str(result.path), "export_seconds": seconds_taken,
            "parity": result.parity, "variants": result.variants, "notes": result.notes,
            "bench": report.to_dict()}


def _sweep(run: Path, args: argparse.Namespace, console: Console) -> dict:
    from visiondeck.export.sweep import sweep_run

    start = time.perf_counter()
    report = sweep_run(run, run / "bundle-sweep",
                       prune_ratios=[float(r) for r in args.sweep_prune.split(",") if r],
                       prune_steps=args.prune_steps, rounds=7, seconds=0.5,
                       log=lambda msg: console.print(f"  {msg}"))
    console.print(f"[bold]{run.name}[/]: sweep in {time.perf_counter() - start:.0f} s, "
                  f"{report.threads} threads, batch {report.batch_size}")
    for r in report.rows:
        marks = ("★" if r.pareto else " ") + (" served" if r.default else "") + (
            "" if r.recommended else " not recommended")
        acc = "—" if r.accuracy is None else f"{r.accuracy:.2%}"
        console.print(f"  {r.variant:26} {r.engine:11} {r.bytes / 1e6:6.2f} MB  acc {acc:>7}"
                      f"  p50 {r.p50_ms:8.3f} ms  p99 {r.p99_ms:8.3f}  {r.images_per_s:9,.0f}"
                      f" img/s {marks}")
    return report.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-run", default=str(WORK / "runs" / "bench-predict"))
    parser.add_argument("--lite0-run", help="a finished EfficientNet-Lite0 run")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--skip-lite0", action="store_true")
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--reexport", action="store_true", help="export even if RUN/bundle "
                        "exists")
    parser.add_argument("--sweep", action="store_true", help="run `export --sweep` instead")
    parser.add_argument("--sweep-prune", default="0.3,0.5")
    parser.add_argument("--prune-steps", type=int, default=600)
    args = parser.parse_args()
    console = Console()
    # a partial re-run (--skip-fashion / --skip-lite0) keeps the other model's figures
    results: dict = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["load_average_before"] = list(os.getloadavg())
    fashion = Path(args.fashion_run)
    if args.sweep:
        for key, run in (("fashion_mnist", None if args.skip_fashion else fashion),
                         ("efficientnet_lite0_224", None if args.skip_lite0 else (
                             Path(args.lite0_run) if args.lite0_run else None))):
            if run is not None:
                results[f"{key}_sweep"] = _sweep(run, args, console)
    elif args.skip_fashion:
        pass
    elif (fashion / "model" / "model.json").is_file():
        results["fashion_mnist"] = _one("Fashion-MNIST", fashion, args.seconds, console,
                                        args.reexport)
    else:
        console.print(f"[yellow]no Fashion-MNIST run at {fashion}[/] (run bench_predict.py)")
    if not args.skip_lite0 and not args.sweep:
        lite0 = Path(args.lite0_run) if args.lite0_run else _lite0_run(console)
        results["efficientnet_lite0_224"] = _one("EfficientNet-Lite0 224", lite0, args.seconds,
                                                 console, args.reexport)
    results["load_average_after"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
