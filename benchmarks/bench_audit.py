"""Label audit benchmark: does `visiondeck data audit` find labels flipped on purpose?

The bundled 4,000-image Fashion-MNIST sample is written out as PNG class folders, and a
manifest gives it labels with a seeded `--rate` of them flipped to another class at random.
`visiondeck data audit MANIFEST --time BUDGET` then runs as a user would run it (its own
process, the automatic recipe), and its flagged label issues (suspects.csv) are scored
against the flips: precision (flagged that were flipped) and recall (flipped that were
flagged). The goal of issue 21: precision ≥ 0.8 and recall ≥ 0.6 within 5 minutes on this
machine. cleanlab's unfiltered candidates (flagged + possible.csv) are scored beside them.

Fashion-MNIST has wrong and ambiguous labels of its own, so a "false positive" here may be
a real error of the original data set; the figure is a lower bound on precision.

With `--grid PATH`, the 50 images the audit doubts most among those whose label was *not*
flipped (the sample's own Fashion-MNIST labels, known to hold ambiguous and wrong ones) are
saved as a thumbnail grid, read back from the audit's saved folds.

    python benchmarks/bench_audit.py                        # 5 % flipped, --time 5m
    python benchmarks/bench_audit.py --time none --out benchmarks/_work/audit-6ep \
        --results benchmarks/results/audit-6epochs.json \
        --grid docs/examples/audit_sample_top50.png train.epochs=6
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "visiondeck"]


def flipped_manifest(data: Path, rate: float, seed: int) -> tuple[Path, set[str]]:
    """data/flipped.csv with `rate` of the labels moved to another class (seeded)."""
    rows = []
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    for cls in classes:
        rows += [[f"{cls}/{f.name}", cls] for f in sorted((data / cls).iterdir())]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(rows), size=round(rate * len(rows)), replace=False)
    flipped = set()
    for i in sorted(chosen.tolist()):
        others = [c for c in classes if c != rows[i][1]]
        rows[i][1] = others[int(rng.integers(len(others)))]
        flipped.add(rows[i][0])
    manifest = data / "flipped.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest, flipped


def run_audit(args: list[str], log: Path) -> float:
    begun = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            [*CLI, "data", "audit", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            check=False,
        )
    elapsed = time.perf_counter() - begun
    if done.returncode != 0:
        sys.exit(f"the audit failed (exit {done.returncode}); see {log}")
    return elapsed


def score(flagged: list[str], flipped: set[str]) -> dict[str, float]:
    hits = len(set(flagged) & flipped)
    return {
        "flagged": len(flagged),
        "flipped": len(flipped),
        "hits": hits,
        "precision": hits / len(flagged) if flagged else 0.0,
        "recall": hits / len(flipped) if flipped else 0.0,
    }


def sample_benchmark(args: argparse.Namespace) -> dict:
    from visiondeck.data.materialize import materialize

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)  # one copy for every run: the automatic recipe's split is kept
    materialize("sample", data)
    manifest, flipped = flipped_manifest(data, args.rate, args.seed)
    out = work / "audit"
    load_before = os.getloadavg()
    budget = [] if args.time == "none" else ["--time", args.time]
    command = [
        str(manifest),
        *budget,
        "--folds",
        str(args.folds),
        "--out",
        str(out),
        *(["--force"] if args.force else []),
        *args.overrides,
    ]
    elapsed = run_audit(command, work / "audit.log")
    load_after = os.getloadavg()
    summary = json.loads((out / "audit.json").read_text())
    result = score(summary["label_issues"], flipped)
    candidates = summary["label_issues"] + summary["possible_label_issues"]
    # what a reviewer meets first: suspects.csv, then possible.csv, each most suspect first
    top = candidates[: len(flipped)]
    result.update(
        {
            "command": "visiondeck data audit " + " ".join(command),
            "wall_s": round(elapsed, 1),
            "audit_elapsed_s": summary["elapsed_s"],
            "oof_accuracy": summary["oof_accuracy"],
            "epochs": summary["epochs"],
            "model": summary["model"],
            "reused_folds": summary["reused_folds"],
            "precision_at_n_flipped": len(set(top) & flipped) / max(len(flipped), 1),
            "cleanlab_candidates": score(candidates, flipped),
            "near_duplicate_pairs": summary["counts"]["near_duplicate_pairs"],
            "outliers": summary["counts"]["outliers"],
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
            "cpus": os.cpu_count(),
            "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
        }
    )
    return result


def doubted_grid(audit: Path, folds: int, path: str | os.PathLike[str], title: str,
                 *, leave_out: set[str] = frozenset()) -> dict:
    """The 50 images an audit doubts most (flagged, then possible; by score), but those in
    `leave_out`, as a thumbnail grid read back from the audit's saved folds (no training)."""
    from dataclasses import replace

    from visiondeck.audit.findings import find_suspects
    from visiondeck.audit.oof import compute_oof
    from visiondeck.audit.report import save_grid
    from visiondeck.config import load_recipe

    recipe = load_recipe(audit / "folds" / "fold-0" / "recipe.yaml")
    oof = compute_oof(recipe, audit, folds=folds)
    if oof.trained:
        sys.exit("the grid must come from the audit's saved folds, yet a fold was trained")
    findings = find_suspects(oof)
    doubted = sorted(findings.suspects + findings.possible, key=lambda s: (-s.score, s.path))
    own = [s for s in doubted if s.path not in leave_out]
    grid = save_grid(replace(findings, suspects=own), oof, path, n=50, title=title)
    return {"grid": str(grid), "shown": min(50, len(own)), "doubted": len(own),
            "flagged": len(findings.suspects), "possible": len(findings.possible)}


def suspects_grid(args: argparse.Namespace, flipped: set[str]) -> dict:
    """The 50 most suspect images among those whose label was *not* flipped: the sample's
    own Fashion-MNIST labels that the audit doubts."""
    return doubted_grid(Path(args.out) / "audit", args.folds, args.grid,
                        "Fashion-MNIST sample: the 50 labels the audit doubts most "
                        "(given → suggested, score; none of them flipped by us)",
                        leave_out=flipped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--time", default="5m", help="the audit's budget (sample); none = the recipe's epochs"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "_work" / "audit"),
        help="working folder (images, audit folders)",
    )
    parser.add_argument(
        "--data",
        default=str(ROOT / "benchmarks" / "_work" / "audit-sample-flipped"),
        help="where the sample's PNGs are written (shared by every run)",
    )
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "audit.json"))
    parser.add_argument("--force", action="store_true", help="pass --force to the audit")
    parser.add_argument(
        "--grid", default=None, help="also save the 50 most suspect unflipped images (PNG)"
    )
    parser.add_argument("overrides", nargs="*", help="key=value for the audit's recipe")
    args = parser.parse_args()
    results = {"sample": sample_benchmark(args)}
    print(json.dumps(results["sample"], indent=2))
    if args.grid:
        _, flipped = flipped_manifest(Path(args.data), args.rate, args.seed)
        results["grid"] = suspects_grid(args, flipped)
        print(json.dumps(results["grid"], indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
