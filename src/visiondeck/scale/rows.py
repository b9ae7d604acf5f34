"""One flat row per predicted file: the columns `visiondeck predict` writes, on any engine.

The local CSV writer and the Ray engine's Parquet/CSV parts both build their rows here, so a
column, its order and its text form are defined once: a change to the layout reaches every
engine, and a Ray result can be compared with a local one cell by cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["csv_cells", "csv_header", "prediction_record", "record_columns"]


def record_columns(top_k: int, *, sha256: bool = False,
                   labels: Sequence[str] | None = None) -> list[str]:
    """Column names, in order: source[, sha256], label, probability, unknown, error, top-k;
    a multi-label Bundle (`labels`: its classes) adds prob_LABEL and pass_LABEL per label
    ("label" is then the passing labels joined by "|", "probability" the highest one)."""
    columns = ["source", *(["sha256"] if sha256 else []), "label", "probability", "unknown",
               "error"]
    for i in range(1, top_k + 1):
        columns += [f"top{i}_label", f"top{i}_probability"]
    for name in labels or ():
        columns += [f"prob_{name}", f"pass_{name}"]
    return columns


def prediction_record(result: Any, top_k: int, *, sha256: str | None = None,
                      with_sha256: bool = False,
                      labels: Sequence[str] | None = None) -> dict[str, Any]:
    """A `Prediction` or `PredictFailure` as typed cells (None where a cell is empty).

    A failure keeps its source and says `problem: message` under "error"; top-k cells past
    the number of classes are None.
    """
    record: dict[str, Any] = {"source": result.source}
    if with_sha256:
        record["sha256"] = sha256
    if result.ok:
        record |= {"label": result.label, "probability": float(result.probability),
                   "unknown": bool(result.unknown), "error": None}
        pairs = list(result.topk)
    else:
        record |= {"label": None, "probability": None, "unknown": None,
                   "error": f"{result.problem}: {result.message}"}
        pairs = []
    for i in range(1, top_k + 1):
        label, p = pairs[i - 1] if i <= len(pairs) else (None, None)
        record[f"top{i}_label"] = label
        record[f"top{i}_probability"] = None if p is None else float(p)
    scores = {s.label: s for s in getattr(result, "scores", ())} if result.ok else {}
    for name in labels or ():
        score = scores.get(name)
        record[f"prob_{name}"] = None if score is None else float(score.probability)
        record[f"pass_{name}"] = None if score is None else bool(score.positive)
    return record


def csv_header(top_k: int, *, sha256: bool = False,
               labels: Sequence[str] | None = None) -> list[str]:
    return record_columns(top_k, sha256=sha256, labels=labels)


def csv_cells(record: dict[str, Any]) -> list[str]:
    """A record's cells as `visiondeck predict --format csv` writes them (6 decimals,
    true/false, empty for None)."""
    return [_text(value) for value in record.values()]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
