"""The label audit: find images whose label is likely wrong, and write a corrected manifest.

Names resolve lazily (torch and cleanlab are imported only when an audit runs).

- `audit(recipe, out_dir, folds=5, budget_s=None) -> AuditResult`: out-of-fold training
  (k folds of every image), confident learning (cleanlab), near-duplicates carrying another
  label and outliers in the models' embedding; writes OUT/suspects.csv (flagged),
  possible.csv (cleanlab's less certain candidates), report.html, audit.json. Finished
  folds are reused on a rerun.
- `relabel(source, edits, out=None) -> RelabelResult`: the source's manifest with a
  reviewed suspects.csv applied; the images are never modified.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "AuditResult": "core",
    "audit": "core",
    "AuditError": "oof",
    "OutOfFold": "oof",
    "compute_oof": "oof",
    "AuditFindings": "findings",
    "Suspect": "findings",
    "find_suspects": "findings",
    "RelabelResult": "relabelling",
    "relabel": "relabelling",
    "save_grid": "report",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
