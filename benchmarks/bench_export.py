"""Export and engine speed: `visiondeck export --int8` + `visiondeck bench` on two models.

    .venv/bin/python benchmarks/bench_export.py [--fashion-run RUN] [--lite0-run RUN]

1. The Fashion-MNIST model (28×28 grey): the run given, else the one bench_predict.py trained
   (benchmarks/_work/runs/bench-predict), exported with INT8.
2. EfficientNet-Lite0 at 224×224 RGB from its offline ImageNet weights: the run given, else a
   short head-only fine-tune here on a 40-per-class slice of the bundled Fashion-MNIST sample
   (upscaled; the point is the engine speed of a real 224 px network, not its accuracy).

Each Bundle is exported (timed) and benchmarked with `bench_bundle` (PyTorch eager, ONNX
Runtime FP32 and INT8); the tables are printed and everything is written to
benchmarks/results/export.json. Load averages are recorded: the figures move with what else
runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
RESULTS = HERE / "results" / "export.json"


def _lite0_run(console: Console) -> Path:
    from visiondeck.config import load_recipe
    from visiondeck.data.materialize import materialize
    from visiondeck.train.runner import train

    data = WORK / "sample-slice"
    materialize("sample", data, limit_per_class=40, progress=False)
    console.print("fine-tuning the EfficientNet-Lite0 head at 224 px (1 epoch)")
    recipe = load_recipe(ROOT / "configs" / "transfer_lite0.yaml", [
        f"data.source={data}", "data.augment=none", "data.cache=off", "train.epochs=1",
        "train.freeze=backbone", "train.warmup_epochs=0", "train.min_val_accuracy=null",
        f"output_dir={WORK / 'runs'}", "name=bench-lite0"])
    return train(recipe, progress=False).run_dir


def _one(name: str, run: Path, seconds: float, console: Console) -> dict:
    from visiondeck.export.bench import bench_bundle, save_bench
    from visiondeck.export.onnx_export import export_run

    start = time.perf_counter()
    result = export_run(run, int8=True, log=lambda msg: console.print(f"  {msg}"))
    export_s = time.perf_counter() - start
    report = bench_bundle(result.path, seconds=seconds, batch_sizes=(1, 8, 32, 64),
                          log=lambda msg: console.print(f"  bench {msg}"))
    save_bench(report)
    console.print(f"[bold]{name}[/]: export {export_s:.1f} s, parity max |Δp| "
                  f"{result.parity['max_abs_diff']:.1e}")
    for row in report.rows:
        console.print(f"  {row.engine:18} {row.bytes / 1e6:7.2f} MB  acc "
                      f"{'—' if row.accuracy is None else f'{row.accuracy:.2%}':>7}  p50 "
                      f"{row.p50_ms:8.3f} ms  p95 {row.p95_ms:8.3f}  p99 {row.p99_ms:8.3f}  "
                      f"best batch {row.best_batch:3d}: {row.images_per_s:9,.0f} img/s")
    return {"run": str(run), "bundle": str(result.path), "export_seconds": round(export_s, 1),
            "parity": result.parity, "variants": result.variants, "notes": result.notes,
            "bench": report.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fashion-run", default=str(WORK / "runs" / "bench-predict"))
    parser.add_argument("--lite0-run", help="a finished EfficientNet-Lite0 run")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--skip-lite0", action="store_true")
    args = parser.parse_args()
    console = Console()
    results: dict = {"load_average_before": list(os.getloadavg())}
    fashion = Path(args.fashion_run)
    if (fashion / "model" / "model.json").is_file():
        results["fashion_mnist"] = _one("Fashion-MNIST", fashion, args.seconds, console)
    else:
        console.print(f"[yellow]no Fashion-MNIST run at {fashion}[/] (run bench_predict.py)")
    if not args.skip_lite0:
        lite0 = Path(args.lite0_run) if args.lite0_run else _lite0_run(console)
        results["efficientnet_lite0_224"] = _one("EfficientNet-Lite0 224", lite0, args.seconds,
                                                 console)
    results["load_average_after"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
