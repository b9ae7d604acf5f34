"""Label sets of multi-label models: the one home of their answer shape and their checks.

The API (`serve/predictions.py`, both lanes), the Lambda handler and the label endpoint call
these, so a multi-label answer, a stored label set and the refusal of an unknown label read
the same everywhere. numpy only: the Lambda handler imports this without FastAPI.

The probabilities and the thresholds themselves come from `Calibration.label_probabilities`
and `Calibration.thresholds` (export/calibration.py); nothing here computes a sigmoid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["SEPARATOR", "TEXT_MAX", "LabelSetError", "check_label_set", "check_servable",
           "joined", "label_answer", "labels_from_text", "stored_text"]

#: the passing labels of an answer are joined by this, as `MultiLabelPrediction.label`
SEPARATOR = "|"
#: the history's text columns (`predicted`, `label`) hold at most this many characters
TEXT_MAX = 200


class LabelSetError(ValueError):
    """A label set a client sent that the served model cannot take (a 422 in the API)."""


def label_answer(classes: Sequence[str], probabilities: np.ndarray, thresholds: np.ndarray,
                 top_k: int, top_seed: int) -> dict[str, Any]:
    """The fields of a multi-label answer (both /predict lanes and the Lambda handler).

    `labels`: every label in class order with its verdict; `predicted_labels` the passing
    ones; `predicted`/`prediction` them joined by "|"; `confidence` the highest probability;
    `top_k`/`top3_predictions` ranked by probability (stable: class order breaks ties).
    """
    rounded = [round(float(p), 6) for p in probabilities]
    passed = [bool(p >= t) for p, t in zip(probabilities, thresholds, strict=True)]
    entries = [{"class": name, "probability": p, "threshold": round(float(t), 6),
                "passed": ok}
               for name, p, t, ok in zip(classes, rounded, thresholds, passed, strict=True)]
    order = np.argsort(-np.asarray(probabilities, dtype=np.float64), kind="stable")
    predicted_labels = [name for name, ok in zip(classes, passed, strict=True) if ok]
    text = joined(predicted_labels)
    return {
        "task": "multilabel", "predicted": text, "prediction": text,
        "confidence": max(rounded, default=0.0),
        "labels": entries, "predicted_labels": predicted_labels,
        "top_k": [{"class": classes[i], "probability": rounded[i]} for i in order[:top_k]],
        "top3_predictions": [{"class": classes[i], "confidence": rounded[i]}
                             for i in order[:top_seed]],
    }


def joined(labels: Iterable[str]) -> str:
    return SEPARATOR.join(labels)


def stored_text(labels: Sequence[str]) -> str:
    """A label set as the history's text columns hold it: joined, and cut to `TEXT_MAX`
    (PostgreSQL refuses longer text there; the full set is in the JSON columns)."""
    text = joined(labels)
    return text if len(text) <= TEXT_MAX else text[:TEXT_MAX - 1] + "…"


def check_label_set(labels: Iterable[str], classes: Sequence[str]) -> list[str]:
    """A client's true label set, checked against the model's classes: every label must be
    one of them (exactly; surrounding spaces dropped). Answers the set in class order,
    duplicates merged; an empty set means "none of the labels"."""
    given = {str(name).strip() for name in labels}
    unknown = sorted(given.difference(classes))
    if unknown:
        shown = ", ".join(repr(name[:50]) for name in unknown[:5])
        raise LabelSetError(f"not labels of this model: {shown}; its labels are "
                            f"{', '.join(classes)}")
    return [name for name in classes if name in given]


def labels_from_text(text: str, classes: Sequence[str]) -> list[str]:
    """A label set sent as one text (`?label=a|b` beside an upload, as a manifest's
    `labels` cell writes it; empty = none of the labels), checked like any other."""
    return check_label_set(text.split(SEPARATOR) if text.strip() else [], classes)


def check_servable(bundle: Any) -> None:
    """Refuse, at load, a multi-label Bundle whose class names a label set cannot carry
    unambiguously: one holding the separator would make "a|b" mean two things. The API
    engine and the Lambda handler both call this; a single-label Bundle passes."""
    if not bundle.multilabel:
        return
    bad = [name for name in bundle.classes if SEPARATOR in name]
    if bad:
        from visiondeck.export.errors import BundleError

        raise BundleError(f"{bundle.name}: multi-label class names may not contain "
                          f"{SEPARATOR!r}: {', '.join(bad[:5])}",
                          hint="rename the labels and export again")
