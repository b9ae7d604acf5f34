"""The label audit on the full Fashion-MNIST training set (60,000 images), as a user runs it.

`visiondeck data audit builtin:fashion-mnist --time BUDGET` in its own process (automatic
recipe, 5 folds), then the 50 images it doubts most as a thumbnail grid (read back from the
saved folds, no training) for the README: Fashion-MNIST is known to hold ambiguous and
wrong labels, and nobody flipped any here, so the grid shows the data set's own.

    python benchmarks/bench_audit_fashion_mnist.py --time 40m \\
        --grid docs/examples/audit_fashion_mnist_top50.png

A rerun with the same --out reuses the finished folds.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit import CLI, ROOT, doubted_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", default="40m", help="the audit's budget")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "audit-fm"))
    parser.add_argument("--grid", default=str(ROOT / "docs" / "examples" /
                                              "audit_fashion_mnist_top50.png"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" /
                                                 "audit-fashion-mnist.json"))
    args = parser.parse_args()
    out = Path(args.out)
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run([*CLI, "data", "audit", "builtin:fashion-mnist", "--time", args.time,
                    "--folds", str(args.folds), "--out", str(out)], check=True)
    wall = time.perf_counter() - started
    with (out / "suspects.csv").open(newline="") as handle:
        flagged = list(csv.DictReader(handle))
    summary = json.loads((out / "audit.json").read_text()) if (out / "audit.json").exists() \
        else {}
    grid = doubted_grid(out, args.folds, args.grid,
                        "Fashion-MNIST training set: the 50 labels the audit doubts most "
                        "(given → suggested, score)")
    results = {"time": args.time, "wall_s": round(wall, 1), "flagged": len(flagged),
               "grid": grid, "audit": summary,
               "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(results, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
