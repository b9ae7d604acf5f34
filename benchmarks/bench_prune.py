"""Structured pruning of the Fashion-MNIST benchmark model: speed gained, accuracy lost.

    .venv/bin/python benchmarks/bench_prune.py --train-only                # the 3-epoch base
    .venv/bin/python benchmarks/bench_prune.py --reuse --ratios 0.3,0.4,0.5 --steps 600,1500 \
        --modes kd,ce                                                       # fine-tune variants
    .venv/bin/python benchmarks/bench_prune.py --time-only                 # one interleaved run
    .venv/bin/python benchmarks/bench_prune.py --speed-only [--ratios 0.3,0.5]

The model is `configs/fashion_mnist.yaml` (resnet_small_t): the run given (`--run`), the
one kept in benchmarks/_work/runs/bench-prune (`--reuse`, trained there if missing), else
one trained here for `--epochs` (3 by default; the time is printed). Each variant removes a
share of the channels of every conv group (torch-pruning, L2 magnitude), fine-tunes some
steps on the training split and exports (parity-checked like any export); test accuracy is
measured on the official 10,000 test images. Fine-tune modes: `kd` (export's default:
distillation from the unpruned network, warm-up + cosine), `kd-2r`/`kd-3r` (the same, pruned
in 2 or 3 rounds), `ce-cos` (labels only, warm-up + cosine), `ce` (labels only, constant rate:
the fine-tune of before). Variants accumulate in benchmarks/results/prune.json (rows of the
same base run are kept across invocations). Throughput (ONNX Runtime, batch 64) and latency
(batch 1) of the unpruned model and every kept variant are measured interleaved in one run
(`sweep.interleaved_timings`) at the end of each invocation, or alone with `--time-only`, so
the ratios hold on a shared machine. `--speed-only` skips training: the same pruning on an
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


MODES = ("kd", "kd-2r", "kd-3r", "ce-cos", "ce")


def _finetune(mode: str):
    from visiondeck.export.prune import LEGACY_FINETUNE, FinetuneConfig

    if mode == "ce":
        return LEGACY_FINETUNE
    if mode == "ce-cos":
        return FinetuneConfig(distill=False)
    if mode.startswith("kd"):
        return FinetuneConfig(rounds=int(mode[3]) if mode != "kd" else 1)
    raise SystemExit(f"unknown mode {mode!r}: use {', '.join(MODES)}")


def _kept_run(epochs: int) -> tuple[Path, float | None]:
    """The finished base run of an earlier invocation, else a freshly trained one."""
    folder = WORK / "runs" / "bench-prune"
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("status") in ("passed", "failed_gate", "completed"):
        print(f"reusing {folder} ({info.get('epochs_run')} epochs)", flush=True)
        return folder, None
    return _train(epochs)


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


def _row(export, reference: float | None) -> dict:
    fp32 = export.variants["fp32"]
    reference = fp32["accuracy"] if reference is None else reference
    return {
        "accuracy": fp32["accuracy"],
        "n_test": fp32["n_test"],
        "bytes": fp32["bytes"],
        "points_lost": round((reference - fp32["accuracy"]) * 100, 2),
    }


def _time(results: dict, threads: int, rounds: int) -> None:
    """Every kept variant's ORT speed against the unpruned model, interleaved in one run."""
    from visiondeck.export.bench import ort_runner
    from visiondeck.export.bundle import load_bundle
    from visiondeck.export.sweep import interleaved_timings

    runners = {}
    for name in results["rows"]:
        folder = _folder(results, name)
        if (folder / "model.onnx").is_file():
            runners[name] = ort_runner(folder / "model.onnx", threads)
    shape = load_bundle(_folder(results, "unpruned")).input.shape
    times = interleaved_timings(runners, shape, batch_size=64, rounds=rounds, seconds=1.0)
    reference = times["unpruned"]["images_per_s"]
    for name, t in times.items():
        results["rows"][name].update(t, speedup=round(t["images_per_s"] / reference, 2))
    results["timing"] = {
        "threads": threads,
        "rounds": rounds,
        "batch_size": 64,
        "load_average": list(os.getloadavg()),
        "variants": len(times),
    }


def _folder(results: dict, name: str) -> Path:
    """Where a variant's Bundle is kept: one folder per base run."""
    return WORK / "prune" / Path(results["run"]).name / ("base" if name == "unpruned" else name)


def _trained_at(run: Path) -> str | None:
    """When the base run finished: the same folder retrained is another base."""
    try:
        return json.loads((run / "run.json").read_text()).get("updated")
    except (OSError, ValueError):
        return None


def _save(results: dict) -> None:
    """Write prune.json, keeping rows another invocation wrote meanwhile (same base run)."""
    try:
        kept = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        kept = {}
    if (kept.get("run"), kept.get("run_updated")) == (results["run"], results["run_updated"]):
        results["rows"] = {**kept.get("rows", {}), **results["rows"]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def _print(results: dict) -> None:
    for name, row in results["rows"].items():
        speed = (
            f"{row['images_per_s']:,.0f} images/s (batch 64)  ×{row['speedup']:.2f}"
            if "speedup" in row
            else "not timed"
        )
        print(
            f"{name:18} test {row['accuracy']:.2%} ({row['points_lost']:+.2f} points lost)  "
            f"{row['bytes'] / 1e3:7.1f} kB  {speed}"
        )


def main() -> None:
    from visiondeck.export.onnx_export import export_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished configs/fashion_mnist.yaml run")
    parser.add_argument("--reuse", action="store_true",
                        help="the base run kept in benchmarks/_work/runs (trained if missing)")
    parser.add_argument("--train-only", action="store_true", help="train (or find) the base")
    parser.add_argument("--time-only", action="store_true",
                        help="time the kept variants of prune.json, no fine-tuning")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--steps", default="600", help="comma-separated step counts")
    parser.add_argument("--modes", default="kd", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-time", action="store_true", help="skip the interleaved timing")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--results", help="results file name (default prune.json)")
    args = parser.parse_args()
    global RESULTS
    if args.results:
        RESULTS = RESULTS.with_name(args.results)
    ratios = [float(r) for r in args.ratios.split(",") if r]
    if args.speed_only:
        speed_only(ratios, args.threads, args.rounds)
        return
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {}
    if args.time_only:
        _time(results, args.threads, args.rounds)
        _print(results)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {RESULTS}")
        return
    seconds = None
    if args.run:
        run = Path(args.run)
    elif args.reuse or args.train_only:
        run, seconds = _kept_run(args.epochs)
    else:
        run, seconds = _train(args.epochs)
    if seconds is not None:
        print(f"trained {args.epochs} epochs in {seconds / 60:.1f} min: {run}", flush=True)
    if args.train_only:
        return
    trained = _trained_at(run)
    if (results.get("run"), results.get("run_updated")) != (str(run), trained):
        results = {"run": str(run), "run_updated": trained, "rows": {}}  # another base run
    results.setdefault("load_average_before", list(os.getloadavg()))
    if seconds is not None:
        results["train_seconds"] = round(seconds, 1)
    base_dir = _folder(results, "unpruned")
    if "unpruned" not in results["rows"] or not (base_dir / "model.onnx").is_file():
        results["rows"]["unpruned"] = {
            **_row(export_run(run, base_dir, reference_images=0), None), "pruning": None
        }
    reference = results["rows"]["unpruned"]["accuracy"]
    for mode in (m for m in args.modes.split(",") if m):
        finetune = _finetune(mode)
        for steps in (int(s) for s in args.steps.split(",") if s):
            for ratio in ratios:
                name = f"pruned-{round(ratio * 100)}-{steps}-{mode}"
                start = time.perf_counter()
                done = export_run(
                    run,
                    _folder(results, name),
                    prune=ratio,
                    prune_method="structured",
                    prune_steps=steps,
                    prune_finetune=finetune,
                    reference_images=0,
                )
                took = time.perf_counter() - start
                p = done.pruning
                results["rows"][name] = {
                    **_row(done, reference),
                    "mode": mode,
                    "seconds": round(took, 1),
                    "load_average": list(os.getloadavg()),
                    "pruning": p,
                }
                print(
                    f"{name}: {p['parameters_before']:,} → {p['parameters_after']:,} parameters,"
                    f" val {p['val_accuracy_before']:.4f} → {p['val_accuracy_pruned']:.4f} → "
                    f"{p['val_accuracy_after']:.4f}; test {done.variants['fp32']['accuracy']:.4f}"
                    f" ({results['rows'][name]['points_lost']:+.2f}) ({took:.0f} s with export)",
                    flush=True,
                )
                _save(results)
    if not args.no_time:
        _time(results, args.threads, args.rounds)
    results["load_average_after"] = list(os.getloadavg())
    _save(results)
    _print(results)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
