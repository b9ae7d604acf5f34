"""`audit(recipe)`: out-of-fold training, the suspects, and the files a person reviews.

OUT/ holds `suspects.csv` (the flagged images, editable; `visiondeck data relabel` reads it
back), `possible.csv` (cleanlab's other, less certain candidates, same columns),
`report.html` (thumbnails), `audit.json` (settings, counts, per-fold epochs, timings), and
the working files a rerun reuses: `prepared/` (the k-fold split), `oof/fold-K.npz` (each
finished fold's out-of-fold probabilities and embeddings) and `folds/fold-K/` (its run
folder).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondeck._files import atomic_write_json
from visiondeck.audit.findings import AuditFindings, find_suspects
from visiondeck.audit.oof import OutOfFold, compute_oof
from visiondeck.audit.report import write_csv, write_html
from visiondeck.config import Recipe

__all__ = ["AuditResult", "audit"]


@dataclass
class AuditResult:
    out_dir: Path
    csv: Path
    html: Path
    summary: Path
    findings: AuditFindings
    oof: OutOfFold
    elapsed_s: float
    possible_csv: Path | None = None


def audit(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    *,
    folds: int = 5,
    budget_s: float | None = None,
    progress: bool = False,
    dup_threshold: float = 0.95,
    k: int = 10,
    show: int = 300,
    force: bool = False,
    on_fold: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> AuditResult:
    """Find likely-wrong labels, near-duplicates with another label and outliers.

    `budget_s` bounds the whole audit (training is planned to end with a tenth of it left
    for scoring and the report); `force` accepts a new split when the data changed;
    `on_fold` reports each fold as it ends.
    """
    started = time.monotonic()
    out = Path(out_dir)
    oof = compute_oof(
        recipe,
        out,
        folds=folds,
        budget_s=budget_s,
        progress=progress,
        force=force,
        on_fold=on_fold,
    )
    findings = find_suspects(oof, dup_threshold=dup_threshold, k=k)
    csv_path = write_csv(findings, out / "suspects.csv")
    possible_csv = write_csv(findings, out / "possible.csv", possible=True)
    html = write_html(
        findings,
        oof,
        out / "report.html",
        source=recipe.data.source,
        folds=folds,
        csv_name=csv_path.name,
        possible_csv_name=possible_csv.name,
        show=show,
        dup_threshold=dup_threshold,
        k=k,
    )
    elapsed = time.monotonic() - started
    summary = out / "audit.json"
    atomic_write_json(
        summary,
        {
            "source": recipe.data.source,
            "root": str(oof.root),
            "folds": folds,
            "split_id": oof.split_id,
            "images": len(oof.relpaths),
            "classes": oof.classes,
            "model": recipe.model.name,
            "epochs": {str(f): e for f, e in oof.epochs.items()},
            "trained_folds": oof.trained,
            "reused_folds": oof.reused,
            "budget_s": budget_s,
            "elapsed_s": round(elapsed, 2),
            "oof_accuracy": round(findings.accuracy, 6),
            "counts": findings.counts(),
            "dup_threshold": dup_threshold,
            "k": k,
            "outlier_fence": findings.outlier_fence,
            "label_issues": [oof.relpaths[i] for i in findings.label_issues],
            "possible_label_issues": [
                oof.relpaths[i] for i in findings.possible_label_issues
            ],
            "near_duplicates": [
                [oof.relpaths[i], oof.relpaths[j], round(s, 6)]
                for i, j, s in findings.near_duplicates
            ],
            "outliers": [oof.relpaths[i] for i in findings.outliers],
        },
    )
    return AuditResult(out, csv_path, html, summary, findings, oof, elapsed, possible_csv)
