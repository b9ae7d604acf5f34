"""Scanning speed: `data check` over the 60,000 Fashion-MNIST training images as PNG files.

    make bench-scan            # or: .venv/bin/python benchmarks/bench_scan.py [--workers 1 2]

Materialises the set once under benchmarks/_work/ (not timed), then times a full scan
(read, sha256, decode through visiondeck.imaging, perceptual hash) with 1 and 2 processes,
and a re-scan that reuses the catalog cache. Prints a table and writes scan.json beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from visiondeck.data.catalog import scan
from visiondeck.data.materialize import materialize
from visiondeck.data.validate import validate

WORK = Path(__file__).resolve().parent / "_work"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    console = Console()
    folder = WORK / "fashion-mnist"
    materialize("fashion-mnist", folder, subsets=["train"], progress=True)
    root = folder / "train"

    rows = []
    catalog = None
    for workers in args.workers:
        start = time.perf_counter()
        catalog = scan(root, workers=workers, progress=True)
        elapsed = time.perf_counter() - start
        rows.append({"mode": f"full scan, {workers} process(es)", "files": len(catalog.entries),
                     "seconds": round(elapsed, 2),
                     "files_per_s": round(len(catalog.entries) / elapsed)})
    start = time.perf_counter()
    cached = scan(root, cache=catalog)
    elapsed = time.perf_counter() - start
    rows.append({"mode": "re-scan, cache hit", "files": len(cached.entries),
                 "seconds": round(elapsed, 2), "files_per_s": round(len(cached.entries) / elapsed)})
    report = validate(cached)

    table = Table(title=f"scan of {root} ({platform.processor() or platform.machine()})")
    for column in ("mode", "files", "seconds", "files/s"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in rows:
        table.add_row(row["mode"], f"{row['files']:,}", f"{row['seconds']:.2f}",
                      f"{row['files_per_s']:,}")
    console.print(table)
    console.print(f"usable {len(report.usable):,}, problems {len(report.problems)}, "
                  f"near-duplicate groups {len(report.near_duplicate_groups)}")
    out = Path(__file__).resolve().parent / "results" / "scan.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "cpu_count": __import__("os").cpu_count()},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
