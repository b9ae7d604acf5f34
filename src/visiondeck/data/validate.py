"""Validation: turn a catalog into a report of what is usable, what is not, and why.

Per-file problems come from the decoder (see `visiondeck.imaging`). On top of those this
module finds what only the whole set can show: exact duplicates (the same bytes twice), label
conflicts (the same bytes under two classes — one of the labels is wrong, and nobody can tell
which, so every copy is set aside), near-duplicate groups (same perceptual hash: kept, but
never split across train and test), class imbalance, and images far smaller than the set's
own: a folder of 10×10 images is a set of 10×10 images, but one 10×10 image among 500×500
photos is a thumbnail or an icon that slipped in (`size_outliers`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from visiondeck._files import atomic_write_json
from visiondeck.data.catalog import Catalog, CatalogEntry, FileStatus
from visiondeck.data.multilabel import (
    MULTILABEL,
    SINGLE,
    cooccurrence,
    label_counts,
    label_names,
    split_labels,
)
from visiondeck.errors import DataError

__all__ = [
    "DataReport",
    "QuarantineResult",
    "quarantine",
    "validate",
]

#: above this max/min class ratio the report warns and suggests `train.balance`
IMBALANCE_WARNING = 3.0
#: an image whose smaller side is under the set's median smaller side divided by this is a
#: size outlier (when data.min_size is null); a set needs this many sized images to judge
SIZE_OUTLIER_RATIO = 4.0
SIZE_OUTLIER_MIN_SET = 8


@dataclass
class DataReport:
    root: Path
    entries: list[CatalogEntry]
    unlabelled: list[str] = field(default_factory=list)
    near_duplicate_groups: list[list[str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: "single" or "multilabel": then `classes` are the labels and `class_counts` the files
    #: carrying each label (a file counts once per label it carries)
    task: str = SINGLE

    @property
    def usable(self) -> list[CatalogEntry]:
        return [e for e in self.entries if e.status is FileStatus.OK]

    @property
    def problems(self) -> list[CatalogEntry]:
        return [e for e in self.entries if e.status.is_bad]

    @property
    def normalised(self) -> list[CatalogEntry]:
        """Usable files whose mode was converted (CMYK, 16-bit, palette, alpha, EXIF...)."""
        return [e for e in self.usable if e.notes]

    @property
    def classes(self) -> list[str]:
        if self.task == MULTILABEL:
            return label_names(e.label for e in self.usable)
        return sorted({e.label for e in self.usable})

    @property
    def class_counts(self) -> dict[str, int]:
        if self.task == MULTILABEL:
            return label_counts([e.label for e in self.usable], self.classes)
        counts = Counter(e.label for e in self.usable)
        return {c: counts[c] for c in sorted(counts)}

    def label_statistics(self) -> dict | None:
        """Multi-label data: labels per file, empty sets, and label co-occurrence counts."""
        if self.task != MULTILABEL:
            return None
        texts = [e.label for e in self.usable]
        sizes = Counter(len(split_labels(t)) for t in texts)
        return {
            "labels": self.classes,
            "files_without_label": sizes.get(0, 0),
            "labels_per_file": {str(k): sizes[k] for k in sorted(sizes)},
            "mean_labels_per_file": round(sum(k * v for k, v in sizes.items())
                                          / max(1, len(texts)), 4),
            "cooccurrence": cooccurrence(texts, self.classes),
        }

    @property
    def status_counts(self) -> dict[str, int]:
        counts = Counter(e.status.value for e in self.entries)
        return {s.value: counts[s.value] for s in FileStatus if counts[s.value]}

    @property
    def imbalance_ratio(self) -> float:
        counts = list(self.class_counts.values())
        return max(counts) / min(counts) if counts and min(counts) else float("inf")

    @property
    def has_issues(self) -> bool:
        return bool(self.problems)

    def to_json(self) -> dict:
        return {
            "root": str(self.root),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": len(self.entries),
            "usable": len(self.usable),
            "status_counts": self.status_counts,
            "class_counts": self.class_counts,
            "imbalance_ratio": round(self.imbalance_ratio, 3)
            if self.class_counts else None,
            "warnings": self.warnings,
            **({"task": self.task, "label_statistics": self.label_statistics()}
               if self.task == MULTILABEL else {}),
            "problems": [_problem_json(e) for e in self.problems],
            "normalised": [
                {"relpath": e.relpath, "mode": e.source_mode, "notes": list(e.notes)}
                for e in self.normalised
            ],
            "near_duplicate_groups": self.near_duplicate_groups,
            "unlabelled": self.unlabelled,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(path, self.to_json())


def _problem_json(entry: CatalogEntry) -> dict:
    return {
        "relpath": entry.relpath,
        "label": entry.label,
        "status": entry.status.value,
        "message": entry.message,
    }


def validate(catalog: Catalog, *, size_outliers: bool = True) -> DataReport:
    """Mark duplicates and label conflicts, group near-duplicates, and collect warnings.

    `size_outliers`: also mark images far smaller than the set's own (see
    `mark_size_outliers`); off when the user gave an absolute floor (data.min_size).
    """
    entries = [_unmark_relative(e) for e in catalog.entries]
    if size_outliers:
        entries = mark_size_outliers(entries)
    by_hash: dict[str, list[int]] = defaultdict(list)
    for index, entry in enumerate(entries):
        if entry.status is FileStatus.OK:
            by_hash[entry.sha256].append(index)

    for indexes in by_hash.values():
        if len(indexes) < 2:
            continue
        paths = [entries[i].relpath for i in indexes]
        labels = {entries[i].label for i in indexes}
        if len(labels) > 1:
            for i in indexes:
                others = ", ".join(p for p in paths if p != entries[i].relpath)
                entries[i] = replace(
                    entries[i], status=FileStatus.LABEL_CONFLICT,
                    message=f"same content as {others} under classes {sorted(labels)}",
                )
            continue
        keeper = min(indexes, key=lambda i: entries[i].relpath)
        for i in indexes:
            if i != keeper:
                entries[i] = replace(
                    entries[i], status=FileStatus.DUPLICATE,
                    message=f"same content as {entries[keeper].relpath}",
                )

    report = DataReport(catalog.root, entries, list(catalog.unlabelled),
                        task=getattr(catalog, "task", SINGLE))
    report.near_duplicate_groups = _near_duplicates(report.usable)
    report.warnings = _warnings(report)
    return report


def mark_size_outliers(entries: list[CatalogEntry],
                       ratio: float = SIZE_OUTLIER_RATIO) -> list[CatalogEntry]:
    """Mark as too small the decoded images whose smaller side is under the set's median
    smaller side / `ratio`: judged against the data, not against a fixed number of pixels."""
    sides = sorted(min(e.width, e.height) for e in entries
                   if e.status is FileStatus.OK and e.width and e.height)
    if len(sides) < SIZE_OUTLIER_MIN_SET:
        return entries
    median = sides[len(sides) // 2]
    floor = median / ratio
    marked = []
    for entry in entries:
        side = min(entry.width, entry.height)
        if entry.status is FileStatus.OK and entry.width and side < floor:
            entry = replace(
                entry, status=FileStatus.TOO_SMALL,
                message=f"{_RELATIVE}image is {entry.width}×{entry.height}, under a quarter of "
                f"this set's median smaller side ({median} px)",
            )
        marked.append(entry)
    return marked


#: how a relative size verdict starts, so a re-validation can take it back (the catalog
#: caches entries, and a verdict against the set must be made again against the new set)
_RELATIVE = "size outlier: "


def _unmark_relative(entry: CatalogEntry) -> CatalogEntry:
    if entry.status is FileStatus.TOO_SMALL and entry.message.startswith(_RELATIVE):
        return replace(entry, status=FileStatus.OK, message="")
    return entry


def _near_duplicates(entries: list[CatalogEntry]) -> list[list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        if entry.dhash:
            groups[entry.dhash].append(entry.relpath)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def _warnings(report: DataReport) -> list[str]:
    warnings = []
    counts = report.class_counts
    if report.task == MULTILABEL:
        return _label_warnings(report, counts)
    if len(counts) < 2:
        warnings.append(f"only {len(counts)} usable class(es): a classifier needs at least 2")
    elif report.imbalance_ratio > IMBALANCE_WARNING:
        big = max(counts, key=counts.get)
        small = min(counts, key=counts.get)
        warnings.append(
            f"classes are imbalanced: {big!r} has {counts[big]} images, {small!r} has "
            f"{counts[small]} (ratio {report.imbalance_ratio:.1f}); consider "
            "train.balance=weights|sampler|focal"
        )
    if report.unlabelled:
        warnings.append(
            f"{len(report.unlabelled)} file(s) lie directly in the root, outside any class "
            "folder, and were ignored"
        )
    return warnings


#: a multi-label label carried by fewer files cannot reach train, val and test alike
MIN_LABEL_FILES = 3


def _label_warnings(report: DataReport, counts: dict[str, int]) -> list[str]:
    warnings = []
    if not counts:
        warnings.append("no usable file carries a label: a multi-label classifier needs some")
    rare = [c for c, n in counts.items() if n < MIN_LABEL_FILES]
    if rare:
        warnings.append(f"label(s) {', '.join(rare)} are carried by fewer than "
                        f"{MIN_LABEL_FILES} files: they cannot be in every split")
    usable = len(report.usable)
    common = [c for c, n in counts.items() if usable and n == usable]
    if common:
        warnings.append(f"label(s) {', '.join(common)} are on every file: nothing to learn")
    if report.unlabelled:
        warnings.append(f"{len(report.unlabelled)} file(s) were ignored (unlabelled)")
    return warnings


@dataclass(frozen=True)
class QuarantineResult:
    destination: Path
    moved: list[tuple[str, str]]  # (relpath, status)
    manifest: Path | None
    #: problem files whose real location is outside the data root (a manifest row naming an
    #: outside path, a `..` path, a symlink leading out): reported, never moved or renamed
    outside: list[str] = field(default_factory=list)
    #: (relpath, error) for files that could not be moved; the others still were
    failed: list[tuple[str, str]] = field(default_factory=list)


def quarantine(report: DataReport, destination: str | os.PathLike[str]) -> QuarantineResult:
    """Move every problem file aside (never delete), keeping its relative path, and write a
    manifest so the move can be reviewed or undone.

    Only files that really live below the data root are moved: a manifest may name any path
    on the machine, and quarantining must never rename someone else's file. Those are listed
    in `outside` instead, and one file that cannot be moved does not stop the others.
    """
    dest = Path(destination).resolve()
    root = report.root.resolve()
    if dest == root or root in dest.parents:
        raise DataError(
            f"quarantine folder {dest} is inside the data folder {root}",
            hint="choose a folder outside the data, so quarantined files are not scanned again",
        )
    moved: list[tuple[str, str]] = []
    outside: list[str] = []
    failed: list[tuple[str, str]] = []
    records = []
    for entry in report.problems:
        if entry.status is FileStatus.MISSING:
            continue
        src = _inside_root(root, entry.relpath)
        if src is None:
            outside.append(entry.relpath)
            continue
        if not src.exists() and not src.is_symlink():
            continue
        target = dest / entry.status.value / entry.relpath
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target = target.with_name(f"{target.stem}.{entry.sha256[:8]}{target.suffix}")
            shutil.move(src, target)
        except OSError as exc:
            failed.append((entry.relpath, str(exc)))
            continue
        moved.append((entry.relpath, entry.status.value))
        records.append({**_problem_json(entry), "moved_to": target.relative_to(dest).as_posix()})
    manifest = None
    if records:
        manifest = dest / "quarantine.json"
        previous = json.loads(manifest.read_text()) if manifest.exists() else []
        atomic_write_json(manifest, previous + records)
    return QuarantineResult(dest, moved, manifest, outside, failed)


def _inside_root(root: Path, relpath: str) -> Path | None:
    """The path of `relpath` below `root` when the file it names really lies there, else None.

    Refuses absolute paths, `..` steps and any symlink (of the file or of a folder on the
    way) whose target is outside the root; `root` must already be resolved.
    """
    rel = Path(relpath)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    path = root / rel
    real = path.resolve()
    if real != root and root not in real.parents:
        return None
    return path
