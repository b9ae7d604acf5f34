"""Structured pruning of the Fashion-MNIST benchmark model: speed gained, accuracy lost.

    .venv/bin/python benchmarks/bench_prune.py [--run RUN] [--ratios 0.3,0.5] [--steps 600]
    .venv/bin/python benchmarks/bench_prune.py --speed-only [--ratios 0.3,0.5]

The model is `configs/fashion_mnist.yaml` (resnet_small_t): the run given, else one trained
here for `--epochs` (3 by default; the time is printed). Each ratio removes that share of
the channels of every conv group (torch-pruning, L2 magnitude), fine-tunes `--steps`
batches on the training split and exports (parity-checked like any export); test accuracy
is measured on the official 10,000 test images. Throughput (ONNX Runtime, batch 64) and
latency (batch 1) of the unpruned and the pruned models are measured interleaved in one run
(`sweep.interleaved_timings`), so the ratios hold on a shared machine. Results:
benchmarks/results/prune.json. `--speed-only` skips training: the same pruning on an
untrained resnet_small_t (speed depends on the shapes, not on the weights), timed the same
way (results/prune-speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
RESULTS = HERE / "results" / "prune.json"


def _train(epochs: int) -> tuple[Path, float]:
    from visiondeck.config import load_recipe
    from visiondeck.train.runner import train

    recipe = load_recipe(
        ROOT / "configs" / "fashion_mnist.yaml",
        [f"train.epochs={epochs}", f"output_dir={WORK / 'runs'}", "name=bench-prune"],
    )
    start = time.perf_counter()
    run = train(recipe, progress=False).run_dir
    return run, time.perf_counter() - start


def speed_only(ratios: list[float], threads: int, rounds: int) -> None:
    import tempfile

    import torch

    from visiondeck.export.bench import ort_runner
    from visiondeck.export.prune import parameter_count, remove_channels
    from visiondeck.export.sweep import interleaved_timings
    from visiondeck.models import create_model

    folder = Path(tempfile.mkdtemp(prefix="vd-prune-speed-"))
    runners, sizes = {}, {}
    for ratio in [0.0, *ratios]:
        torch.manual_seed(0)
        model = create_model("resnet_small_t", num_classes=10, in_chans=1, pretrained=False)
        model.eval()
        if ratio:
            remove_channels(model, ratio, torch.randn(1, 1, 28, 28))
        path = folder / f"pruned-{round(ratio * 100)}.onnx"
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 28, 28),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        name = "unpruned" if not ratio else f"pruned-{round(ratio * 100)}"
        runners[name] = ort_runner(path, threads)
        sizes[name] = (parameter_count(model), path.stat().st_size)
    times = interleaved_timings(runners, (1, 28, 28), batch_size=64, rounds=rounds, seconds=1.0)
    base = times["unpruned"]["images_per_s"]
    rows = {}
    for name, t in times.items():
        rows[name] = {
            **t,
            "parameters": sizes[name][0],
            "bytes": sizes[name][1],
            "speedup": round(t["images_per_s"] / base, 2),
        }
        print(
            f"{name:11} {sizes[name][0]:8,} parameters  p50 {t['p50_ms']:.3f} ms  "
            f"{t['images_per_s']:,.0f} images/s (batch 64)  ×{rows[name]['speedup']:.2f}"
        )
    out = RESULTS.with_name("prune-speed.json")
    out.write_text(
        json.dumps(
            {
                "threads": threads,
                "rounds": rounds,
                "rows": rows,
                "load_average": list(os.getloadavg()),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


def main() -> None:
    from visiondeck.export.bench import ort_runner
    from visiondeck.export.onnx_export import export_run
    from visiondeck.export.sweep import interleaved_timings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished configs/fashion_mnist.yaml run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    if args.speed_only:
        speed_only([float(r) for r in args.ratios.split(",") if r], args.threads, args.rounds)
        return
    results: dict = {"load_average_before": list(os.getloadavg())}
    if args.run:
        run = Path(args.run)
    else:
        run, seconds = _train(args.epochs)
        results["train_seconds"] = round(seconds, 1)
        print(f"trained {args.epochs} epochs in {seconds / 60:.1f} min: {run}", flush=True)
    base = export_run(run, WORK / "prune" / "base", reference_images=0)
    exports = {"unpruned": base}
    for ratio in (float(r) for r in args.ratios.split(",") if r):
        start = time.perf_counter()
        done = export_run(
            run,
            WORK / "prune" / f"pruned-{round(ratio * 100)}",
            prune=ratio,
            prune_method="structured",
            prune_steps=args.steps,
            reference_images=0,
        )
        exports[f"pruned-{round(ratio * 100)}"] = done
        print(
            f"pruned {ratio:.0%}: {done.pruning['parameters_before']:,} → "
            f"{done.pruning['parameters_after']:,} parameters, val accuracy "
            f"{done.pruning['val_accuracy_before']:.4f} → {done.pruning['val_accuracy_pruned']:.4f}"
            f" → {done.pruning['val_accuracy_after']:.4f} after {args.steps} steps "
            f"({time.perf_counter() - start:.0f} s with export)",
            flush=True,
        )
    runners = {
        name: ort_runner(e.path / "model.onnx", args.threads) for name, e in exports.items()
    }
    times = interleaved_timings(
        runners, base.bundle.input.shape, batch_size=64, rounds=args.rounds, seconds=1.0
    )
    reference = times["unpruned"]["images_per_s"]
    accuracy = base.variants["fp32"]["accuracy"]
    results["threads"] = args.threads
    results["rows"] = {}
    for name, e in exports.items():
        t = times[name]
        row = {
            "accuracy": e.variants["fp32"]["accuracy"],
            "n_test": e.variants["fp32"]["n_test"],
            "bytes": e.variants["fp32"]["bytes"],
            **t,
            "speedup": round(t["images_per_s"] / reference, 2),
            "points_lost": round((accuracy - e.variants["fp32"]["accuracy"]) * 100, 2),
            "pruning": e.pruning,
        }
        results["rows"][name] = row
        print(
            f"{name:11} test {row['accuracy']:.2%} ({row['points_lost']:+.2f} points lost)  "
            f"{row['bytes'] / 1e3:7.1f} kB  p50 {t['p50_ms']:.3f} ms  p99 {t['p99_ms']:.3f} ms"
            f"  {t['images_per_s']:,.0f} images/s (batch 64)  ×{row['speedup']:.2f}"
        )
    results["run"] = str(run)
    results["load_average_after"] = list(os.getloadavg())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
