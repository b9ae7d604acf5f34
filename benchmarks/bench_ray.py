"""Ray's overhead on one machine: `predict --engine ray` vs the local streaming path.

    .venv/bin/python benchmarks/bench_ray.py [--bundle B | --run R] [--epochs 1] [--repeats 2]

Same files (the 10,000 Fashion-MNIST test images as PNG, materialised under
benchmarks/_work/, not timed), same Bundle (given, or `bench_predict.py`'s quick
configs/fashion_mnist.yaml run, trained and exported here when missing), one core each:

* local: `Predictor.predict_files(workers=1)` with one ORT thread, writing every row to a
  CSV file: what `visiondeck predict FOLDER -o out.csv --workers 1` does after start-up,
  held to one core like a Ray actor (the command itself leaves ORT its default threads);
* ray: `scale.ray_predict.predict_on_ray` on a Ray started in this process with one CPU
  (one scoring actor): shards, sha256 of every file, Parquet parts, compaction to
  predictions.parquet. Ray's start-up is timed apart (a cluster is started once, not per job).

Runs alternate (local, ray, local, ray...) and the best of each is kept, so a burst of other
work on this shared machine hurts both alike. Prints a table and writes
benchmarks/results/ray.json with the load average before and after, and the per-image cost
(core-seconds per image) that docs/scaling.md's plan for 100 million images uses.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
RESULTS = HERE / "results" / "ray.json"
sys.path.insert(0, str(HERE))


def _local(bundle: Path, files: list[str], out: Path) -> float:
    from visiondeck.export.predictor import Predictor
    from visiondeck.scale.rows import csv_cells, csv_header, prediction_record

    start = time.perf_counter()
    predictor = Predictor(bundle, threads=1, top_k=3)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(csv_header(3))
        for result in predictor.predict_files(files, top_k=3, batch_size=64, workers=1):
            writer.writerow(csv_cells(prediction_record(result, 3)))
    return time.perf_counter() - start


def _ray(bundle: Path, files: list[str], out: Path, shard_size: int) -> tuple[float, dict]:
    from visiondeck.scale.ray_predict import predict_on_ray

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = predict_on_ray(bundle, files, out, top_k=3, batch_size=64, shard_size=shard_size,
                            actors=1)
    seconds = time.perf_counter() - start
    assert result.scored == len(files), result
    return seconds, result.timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="Bundle to use (skips training and export)")
    parser.add_argument("--run", help="finished run to export and use")
    parser.add_argument("--epochs", type=int, default=1, help="epochs when training here")
    parser.add_argument("--images", type=int, default=10_000, help="files to score")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    args.variant = "fp32"
    console = Console()

    from bench_predict import _bundle

    from visiondeck.data.materialize import materialize

    data = WORK / "fashion-mnist"
    materialize("fashion-mnist", data, subsets=["test"], progress=True)
    files = sorted(str(p) for p in (data / "test").rglob("*.png"))[:args.images]
    bundle = _bundle(args, console)
    scratch = Path(tempfile.mkdtemp(prefix="vdbr", dir="/tmp"))
    os.makedirs(scratch / "ray")
    os.environ.setdefault("RAY_TMPDIR", str(scratch))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    load_before = os.getloadavg()

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False, _temp_dir=str(scratch / "ray"))
    ray_start_s = time.perf_counter() - start
    local_runs, ray_runs, phases = [], [], []
    try:
        for i in range(args.repeats):
            console.print(f"round {i + 1}: local")
            local_runs.append(_local(bundle, files, scratch / "local.csv"))
            console.print(f"round {i + 1}: ray")
            seconds, timings = _ray(bundle, files, scratch / "ray-out", args.shard_size)
            ray_runs.append(seconds)
            phases.append(timings)
    finally:
        ray.shutdown()
    load_after = os.getloadavg()
    local_s, ray_s = min(local_runs), min(ray_runs)
    n = len(files)
    report = {
        "images": n, "bundle": str(bundle), "cores": 1, "shard_size": args.shard_size,
        "local": {"seconds": round(local_s, 3), "images_per_s": round(n / local_s, 1),
                  "runs": [round(s, 3) for s in local_runs]},
        "ray": {"seconds": round(ray_s, 3), "images_per_s": round(n / ray_s, 1),
                "runs": [round(s, 3) for s in ray_runs], "start_s": round(ray_start_s, 2),
                "phases": [{k: round(v, 3) for k, v in p.items()} for p in phases]},
        "overhead": round(ray_s / local_s - 1, 4),
        "core_seconds_per_image": {"local": round(local_s / n, 6), "ray": round(ray_s / n, 6)},
        "machine": {"processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    table = Table(title=f"{n:,} images, one core each (load {load_before[0]:.1f})")
    for column in ("path", "seconds (best)", "images/s", "core-ms / image"):
        table.add_column(column)
    for name, seconds in (("local streaming (CSV)", local_s), ("ray (parquet + sha256)", ray_s)):
        table.add_row(name, f"{seconds:.2f}", f"{n / seconds:,.0f}", f"{1000 * seconds / n:.3f}")
    console.print(table)
    console.print(f"Ray overhead: {report['overhead']:+.1%} (Ray start-up apart: "
                  f"{ray_start_s:.1f} s) → {RESULTS}")


if __name__ == "__main__":
    main()
