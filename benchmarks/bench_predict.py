"""Prediction speed: `visiondeck predict` streaming vs a naive loop, same images, same run.

    .venv/bin/python benchmarks/bench_predict.py [--bundle B | --run R] [--epochs 1]

Materialises the 10,000 Fashion-MNIST test images as PNG under benchmarks/_work/ (not
timed). The model is the Bundle given, or the run given (exported if needed), or else a
quick run of configs/fashion_mnist.yaml trained here (`--epochs`, 1 by default) and exported.
Then, on the same files:

* naive: for each file, PIL open → tensor → PyTorch model → softmax, one image at a time
  (the loop the seeds' `demo_predict.py` runs), with torch at 1 thread, its fastest setting
  for batch 1 on this machine (2 threads were slower);
* `visiondeck predict BUNDLE FOLDER --format jsonl` as a subprocess, timed end to end
  (interpreter start, imports and worker start-up included);
* `Predictor.predict_files` in process (the same streaming path without start-up).

Prints a table and writes benchmarks/results/predict.json. The machine's load average is
recorded before and after: on a shared machine the figures move with what else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
RESULTS = HERE / "results" / "predict.json"


def _bundle(args: argparse.Namespace, console: Console) -> Path:
    from visiondeck.export.onnx_export import export_run

    if args.bundle:
        return Path(args.bundle)
    run = Path(args.run) if args.run else None
    if run is None:
        from visiondeck.config import load_recipe
        from visiondeck.train.runner import train

        console.print(f"training configs/fashion_mnist.yaml for {args.epochs} epoch(s)")
        recipe = load_recipe(ROOT / "configs" / "fashion_mnist.yaml",
                             [f"train.epochs={args.epochs}", f"output_dir={WORK / 'runs'}",
                              "name=bench-predict"])
        run = train(recipe, progress=False).run_dir
    if (run / "bundle" / "bundle.json").is_file():
        return run / "bundle"
    console.print(f"exporting {run}")
    return export_run(run, int8=True).path


def _naive(bundle_dir: Path, files: list[str]) -> tuple[float, list[str]]:
    """PIL open → torch model, one image at a time; returns (seconds, labels)."""
    import torch
    from PIL import Image

    from visiondeck.export.bundle import load_bundle
    from visiondeck.export.torch_model import load_torch_model
    from visiondeck.imaging import ALLOWED_FORMATS

    torch.set_num_threads(1)
    bundle = load_bundle(bundle_dir)
    model = load_torch_model(bundle)
    spec = bundle.input
    mode = spec.mode
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    labels = []
    start = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            image = Image.open(path, formats=sorted(ALLOWED_FORMATS)).convert(mode)
            image = image.resize((spec.image_size, spec.image_size))
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
            x = x.view(spec.image_size, spec.image_size, -1).permute(2, 0, 1)
            x = ((x - mean) / std).unsqueeze(0)
            probs = torch.softmax(model(x), dim=1)
            labels.append(bundle.classes[int(probs.argmax())])
    return time.perf_counter() - start, labels


def _cli(bundle_dir: Path, folder: Path, out: Path) -> float:
    command = [sys.executable, "-m", "visiondeck", "predict", str(bundle_dir), str(folder),
               "--format", "jsonl", "--top-k", "1"]
    start = time.perf_counter()
    with out.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.PIPE, text=True,
                              check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"visiondeck predict failed ({done.returncode}): {done.stderr}")
    return elapsed


def _accuracy(sources: list[str], labels: list[str]) -> float:
    truth = [Path(s).parent.name for s in sources]
    return float(np.mean([t == p for t, p in zip(truth, labels, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="Bundle to use (skips training and export)")
    parser.add_argument("--run", help="finished run to export and use")
    parser.add_argument("--epochs", type=int, default=1, help="epochs when training here")
    parser.add_argument("--variant", default="fp32", choices=["fp32", "int8"])
    args = parser.parse_args()
    console = Console()

    from visiondeck.data.materialize import materialize
    from visiondeck.export.predictor import Predictor

    data = WORK / "fashion-mnist"
    materialize("fashion-mnist", data, subsets=["test"], progress=True)
    folder = data / "test"
    files = sorted(str(p) for p in folder.rglob("*.png"))
    bundle_dir = _bundle(args, console)
    load_before = os.getloadavg()

    console.print(f"naive loop over {len(files):,} files")
    naive_s, naive_labels = _naive(bundle_dir, files)
    console.print("visiondeck predict (subprocess)")
    jsonl = WORK / "predict.jsonl"
    cli_s = _cli(bundle_dir, folder, jsonl)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    cli_sources = [r["source"] for r in rows if "label" in r]
    cli_labels = [r["label"] for r in rows if "label" in r]
    console.print("Predictor.predict_files (in process)")
    predictor = Predictor(bundle_dir, variant=args.variant)
    start = time.perf_counter()
    streamed = list(predictor.predict_files(files))
    api_s = time.perf_counter() - start
    load_after = os.getloadavg()

    by_source = dict(zip(files, naive_labels, strict=True))
    agreement = float(np.mean([by_source[s] == label
                               for s, label in zip(cli_sources, cli_labels, strict=True)]))
    n = len(files)
    results = {
        "images": n,
        "bundle": str(bundle_dir),
        "architecture": predictor.bundle.architecture,
        "variant": args.variant,
        "naive": {"seconds": round(naive_s, 2), "images_per_s": round(n / naive_s, 1),
                  "accuracy": round(_accuracy(files, naive_labels), 4), "torch_threads": 1},
        "cli": {"seconds": round(cli_s, 2), "images_per_s": round(len(cli_labels) / cli_s, 1),
                "accuracy": round(_accuracy(cli_sources, cli_labels), 4),
                "predicted": len(cli_labels), "workers": os.cpu_count()},
        "api": {"seconds": round(api_s, 2),
                "images_per_s": round(sum(r.ok for r in streamed) / api_s, 1)},
        "speedup_cli_vs_naive": round(naive_s / cli_s * len(cli_labels) / n, 2),
        "speedup_api_vs_naive": round(naive_s / api_s, 2),
        "agreement_cli_vs_naive": round(agreement, 4),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(v, 2) for v in load_before],
                    "load_average_after": [round(v, 2) for v in load_after]},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    table = Table(title=f"{n:,} Fashion-MNIST test PNGs, {results['architecture']} "
                  f"({platform.machine()}, {os.cpu_count()} cores)", title_justify="left")
    for column in ("path", "seconds", "images/s", "accuracy"):
        table.add_column(column, justify="left" if column == "path" else "right")
    table.add_row("naive loop (PIL → torch, 1 image)", f"{naive_s:.1f}",
                  f"{results['naive']['images_per_s']:,.0f}", f"{results['naive']['accuracy']:.2%}")
    table.add_row("visiondeck predict (CLI, end to end)", f"{cli_s:.1f}",
                  f"{results['cli']['images_per_s']:,.0f}", f"{results['cli']['accuracy']:.2%}")
    table.add_row("Predictor.predict_files (in process)", f"{api_s:.1f}",
                  f"{results['api']['images_per_s']:,.0f}", "")
    console.print(table)
    console.print(f"speed-up: CLI {results['speedup_cli_vs_naive']}×, in process "
                  f"{results['speedup_api_vs_naive']}× (agreement with the naive loop "
                  f"{agreement:.2%}); load average {load_before[0]:.1f} → {load_after[0]:.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
