"""`visiondeck retrain`'s two decisions: should we retrain, and on what data.

- `decide_retrain(accuracy, alarms, ...)`: retrain when live accuracy (from labelled predictions)
  is below `min_accuracy` with enough labels, or, with `on_drift`, when any drift test
  alarms. The reasons are spelled out, so the CLI (and an Airflow task) can say why.
- `gather_labelled(records, uploads, out, classes)`: the labelled predictions whose images
  the server kept (`VISIONDECK_KEEP_UPLOADS`, content-addressed by SHA-256) become a class
  folder `out/<label>/<sha256><ext>`. One image labelled twice keeps its latest label;
  labels naming no class of the model and images that were not kept are counted, not used.
- `write_manifest(path, rows)`: the recipe's own images plus the gathered ones as one
  `path,label` CSV, which a recipe takes as `data.source`.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondeck.monitor.assess import FeatureDrift, LiveAccuracy

__all__ = ["GatheredLabels", "RetrainDecision", "decide_retrain", "find_kept_upload",
           "gather_labelled", "write_manifest"]


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: tuple[str, ...]
    accuracy: float | None
    labelled: int
    drift_alarms: tuple[str, ...]


def decide_retrain(accuracy: LiveAccuracy, alarms: Iterable[FeatureDrift] = (), *,
                   min_accuracy: float | None = None, on_drift: bool = False,
                   min_labelled: int = 20) -> RetrainDecision:
    """Whether live accuracy or drift calls for a new model, and why.

    `accuracy` and `alarms` come from a `DriftAssessment` (`.live_accuracy`, `.alarms`);
    a Bundle without reference statistics can still be judged on accuracy alone.
    """
    acc = accuracy
    reasons = []
    if min_accuracy is not None and acc.accuracy is not None and acc.labelled >= min_labelled \
            and acc.accuracy < min_accuracy:
        reasons.append(f"live accuracy {acc.accuracy:.3f} on {acc.labelled} labelled "
                       f"predictions is below {min_accuracy:.3f}")
    drifted = tuple(dict.fromkeys(f"{row.feature}/{row.method}" for row in alarms))
    if on_drift and drifted:
        reasons.append(f"drift alarms: {', '.join(drifted)}")
    return RetrainDecision(bool(reasons), tuple(reasons), acc.accuracy, acc.labelled, drifted)


def find_kept_upload(uploads: str | os.PathLike[str], sha256: str) -> Path | None:
    """The kept image with this SHA-256 (any extension), or None."""
    folder = Path(uploads) / sha256[:2]
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256) \
            or not folder.is_dir():
        return None
    return next((p for p in sorted(folder.glob(f"{sha256}.*")) if p.is_file()), None)


@dataclass
class GatheredLabels:
    folder: Path
    files: list[tuple[Path, str]]  # (image, label) written under folder
    per_class: dict[str, int]
    missing_images: int = 0  # labelled, but the server did not keep the image
    unknown_labels: dict[str, int] = field(default_factory=dict)
    relabelled: int = 0  # images given differing labels (the latest one is used)


def gather_labelled(records: Iterable[Any], uploads: str | os.PathLike[str],
                    out: str | os.PathLike[str], classes: Sequence[str]) -> GatheredLabels:
    """Copy the kept images of labelled predictions (oldest first) into `out/<label>/`."""
    known = set(classes)
    latest: dict[str, str] = {}
    unknown: Counter[str] = Counter()
    relabelled: set[str] = set()  # images, not label changes: a → b → a is one image
    for record in records:
        label = getattr(record, "label", None)
        if not label:
            continue
        if label not in known:
            unknown[label] += 1
            continue
        sha = record.image_sha256
        if sha in latest and latest[sha] != label:
            relabelled.add(sha)
        latest[sha] = label
    folder = Path(out)
    files: list[tuple[Path, str]] = []
    missing = 0
    for sha, label in latest.items():
        source = find_kept_upload(uploads, sha)
        if source is None:
            missing += 1
            continue
        target = folder / label / f"{sha}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"*/{sha}.*"):  # relabelled since the last gathering
            if stale != target:
                stale.unlink()
        if not target.exists():
            shutil.copyfile(source, target)
        files.append((target.resolve(), label))
    per_class = Counter(label for _, label in files)
    return GatheredLabels(folder, files, dict(sorted(per_class.items())), missing,
                          dict(unknown), len(relabelled))


def write_manifest(path: str | os.PathLike[str], rows: Iterable[tuple[Path, str]]) -> int:
    """A `path,label` CSV with absolute paths (a recipe's `data.source`); returns the rows."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for image, label in rows:
            writer.writerow([str(Path(image).resolve()), label])
            count += 1
    os.replace(tmp, target)
    return count
