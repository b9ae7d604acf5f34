"""Stratified, seeded, group-aware splits that are written to disk and checked on reuse.

A split is decided once and saved with each file's content hash, so every later run trains
and tests on exactly the same files, and a changed, missing or added image is noticed
instead of silently leaking into a different split. Files whose perceptual hashes match
(re-encoded or resized copies) form one group and always land on the same side; a model
tested on a copy of its training image would report a score nobody can reproduce.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visiondeck._files import atomic_write_json, atomic_writer
from visiondeck.data.catalog import Catalog, CatalogEntry, FileStatus
from visiondeck.data.multilabel import (
    MULTILABEL,
    SINGLE,
    iterative_stratify,
    label_matrix,
    label_names,
    split_labels,
)
from visiondeck.errors import DataError, SplitMismatchError

__all__ = [
    "SUBSETS",
    "Split",
    "SplitCheck",
    "SplitRecord",
    "load_split",
    "make_split",
    "save_split",
    "verify_split",
]

SUBSETS = ("train", "val", "test")
SPLIT_VERSION = 1


@dataclass(frozen=True)
class SplitRecord:
    relpath: str
    label: str
    sha256: str
    subset: str
    fold: int = -1  # -1 when not using k-fold (or for held-out test files)


@dataclass
class Split:
    root: Path
    classes: list[str]
    records: list[SplitRecord]
    seed: int
    val_fraction: float
    test_fraction: float
    folds: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Content address of the split: same files, hashes and assignment = same id."""
        digest = hashlib.sha256()
        for r in sorted(self.records, key=lambda r: r.relpath):
            digest.update(f"{r.relpath}\0{r.label}\0{r.sha256}\0{r.subset}\0{r.fold}\n".encode())
        return digest.hexdigest()[:16]

    def subset(self, name: str) -> list[SplitRecord]:
        return [r for r in self.records if r.subset == name]

    def fold(self, k: int) -> tuple[list[SplitRecord], list[SplitRecord]]:
        """(train, val) records of cross-validation fold k: fold k validates, the others train."""
        if not 0 <= k < self.folds:
            raise DataError(f"fold {k} does not exist; this split has {self.folds} folds")
        pool = [r for r in self.records if r.fold >= 0]
        return [r for r in pool if r.fold != k], [r for r in pool if r.fold == k]

    @property
    def task(self) -> str:
        """"single", or "multilabel" (record labels are then label sets "a|b")."""
        return str(self.meta.get("task", SINGLE))

    @property
    def multilabel(self) -> bool:
        return self.task == MULTILABEL

    def counts(self) -> dict[str, dict[str, int]]:
        """Files per class and subset (multi-label: files carrying each label)."""
        table: dict[str, dict[str, int]] = {s: dict.fromkeys(self.classes, 0) for s in SUBSETS}
        for r in self.records:
            for label in (split_labels(r.label) if self.multilabel else [r.label]):
                table[r.subset][label] += 1
        return table

    def label_index(self, label: str) -> int:
        return self.classes.index(label)


def make_split(
    entries: Iterable[CatalogEntry],
    *,
    root: Path,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    folds: int = 0,
    seed: int = 42,
    task: str = SINGLE,
) -> Split:
    """Split usable files per class; with `folds` > 1, non-test files get a fold number and
    `val` stays empty (each fold serves as validation in turn). `task="multilabel"`: labels
    are label sets, split by iterative stratification (`_multilabel_split`)."""
    if val_fraction + test_fraction >= 1.0:
        raise DataError("val_fraction + test_fraction must leave files for training")
    if folds == 1:
        raise DataError("k-fold needs at least 2 folds (folds=0 turns it off)")
    usable = sorted(
        (e for e in entries if e.status is FileStatus.OK), key=lambda e: e.relpath
    )
    if not usable:
        raise DataError("no usable images to split", hint="run `visiondeck data check` first")
    if task == MULTILABEL:
        return _multilabel_split(usable, root=Path(root), val_fraction=val_fraction,
                                 test_fraction=test_fraction, folds=folds, seed=seed)
    classes = sorted({e.label for e in usable})

    groups = _groups(usable)
    rng = np.random.default_rng(seed)
    records: list[SplitRecord] = []
    for label in classes:
        class_groups = [g for g in groups if _group_label(g) == label]
        order = rng.permutation(len(class_groups))
        class_groups = [class_groups[i] for i in order]
        total = sum(len(g) for g in class_groups)
        n_test = round(total * test_fraction)
        n_val = 0 if folds else round(total * val_fraction)
        fold_sizes = [0] * max(folds, 0)
        taken_test = taken_val = 0
        for group in class_groups:
            fold = -1
            if taken_test < n_test:
                subset, taken_test = "test", taken_test + len(group)
            elif taken_val < n_val:
                subset, taken_val = "val", taken_val + len(group)
            else:
                subset = "train"
                if folds:
                    fold = int(np.argmin(fold_sizes))
                    fold_sizes[fold] += len(group)
            records.extend(
                SplitRecord(e.relpath, e.label, e.sha256, subset, fold) for e in group
            )
    records.sort(key=lambda r: r.relpath)
    return Split(Path(root), classes, records, seed, val_fraction, test_fraction, folds)


def _multilabel_split(usable: list[CatalogEntry], *, root: Path, val_fraction: float,
                      test_fraction: float, folds: int, seed: int) -> Split:
    """Iterative stratification over near-duplicate groups: every label with enough files
    reaches every subset (or fold) in about the asked share, and a group stays together."""
    classes = label_names(e.label for e in usable)
    groups = _groups(usable)
    counts = np.stack([label_matrix([e.label for e in g], classes).sum(axis=0)
                       for g in groups]).astype(np.int64)
    sizes = np.array([len(g) for g in groups])
    if folds:
        names = [("test", -1)] + [("train", k) for k in range(folds)]
        rest = (1.0 - test_fraction) / folds
        fractions = [test_fraction] + [rest] * folds
    else:
        names = [("test", -1), ("val", -1), ("train", -1)]
        fractions = [test_fraction, val_fraction, 1.0 - test_fraction - val_fraction]
    chosen = iterative_stratify(counts, fractions, seed=seed, sizes=sizes)
    records = [SplitRecord(e.relpath, e.label, e.sha256, *names[int(subset)])
               for group, subset in zip(groups, chosen, strict=True) for e in group]
    records.sort(key=lambda r: r.relpath)
    return Split(root, classes, records, seed, val_fraction, test_fraction, folds,
                 {"task": MULTILABEL})


def _groups(entries: list[CatalogEntry]) -> list[list[CatalogEntry]]:
    """Union of exact-hash and perceptual-hash matches; groups in first-path order."""
    buckets: dict[str, list[CatalogEntry]] = defaultdict(list)
    for entry in entries:
        buckets[entry.dhash or entry.sha256].append(entry)
    return list(buckets.values())


def _group_label(group: list[CatalogEntry]) -> str:
    counts = Counter(e.label for e in group)
    return min(counts, key=lambda label: (-counts[label], label))


# ---------------------------------------------------------------------------- persistence


def save_split(split: Split, folder: str | os.PathLike[str]) -> Path:
    """Write split.csv (one row per file), split.json (parameters) and classes.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_writer(folder / "split.csv", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["relpath", "label", "sha256", "subset", "fold"])
        for r in split.records:
            writer.writerow([r.relpath, r.label, r.sha256, r.subset, r.fold])
    meta = {
        "split_version": SPLIT_VERSION,
        "id": split.id,
        "root": str(split.root),
        "classes": split.classes,
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "test_fraction": split.test_fraction,
        "folds": split.folds,
        "counts": split.counts(),
        **split.meta,
    }
    atomic_write_json(folder / "split.json", meta)
    atomic_write_json(folder / "classes.json", split.classes)
    return folder


def load_split(folder: str | os.PathLike[str]) -> Split:
    folder = Path(folder)
    try:
        meta = json.loads((folder / "split.json").read_text(encoding="utf-8"))
        with (folder / "split.csv").open(newline="", encoding="utf-8") as handle:
            records = [
                SplitRecord(row["relpath"], row["label"], row["sha256"], row["subset"],
                            int(row["fold"]))
                for row in csv.DictReader(handle)
            ]
    except FileNotFoundError as exc:
        raise DataError(
            f"no split in {folder}", hint="create one with `visiondeck data split DATA`"
        ) from exc
    except (ValueError, KeyError) as exc:
        raise DataError(f"split in {folder} is damaged: {exc}") from exc
    extra = {k: v for k, v in meta.items() if k not in _META_KEYS}
    split = Split(
        Path(meta["root"]), list(meta["classes"]), records, int(meta["seed"]),
        float(meta["val_fraction"]), float(meta["test_fraction"]), int(meta["folds"]), extra,
    )
    if meta.get("id") and meta["id"] != split.id:
        raise DataError(f"split in {folder} was edited by hand (id mismatch)")
    return split


_META_KEYS = {
    "split_version", "id", "root", "classes", "seed", "val_fraction", "test_fraction",
    "folds", "counts",
}


@dataclass(frozen=True)
class SplitCheck:
    changed: list[str]
    missing: list[str]
    added: list[str]

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for name, items in (("changed", self.changed), ("missing", self.missing),
                            ("added", self.added)):
            if items:
                shown = ", ".join(items[:limit]) + (" …" if len(items) > limit else "")
                parts.append(f"{len(items)} {name} ({shown})")
        return "; ".join(parts) or "unchanged"


def verify_split(split: Split, catalog: Catalog, *, strict: bool = False) -> SplitCheck:
    """Compare a saved split with a fresh catalog of the same source (hashes, not dates)."""
    current = {e.relpath: e for e in catalog.entries if e.status is FileStatus.OK}
    recorded = {r.relpath: r for r in split.records}
    changed = sorted(p for p, r in recorded.items() if p in current and
                     current[p].sha256 != r.sha256)
    missing = sorted(p for p in recorded if p not in current)
    added = sorted(p for p in current if p not in recorded)
    check = SplitCheck(changed, missing, added)
    if strict and not check.ok:
        raise SplitMismatchError(
            f"the data changed since the split was made: {check.describe()}",
            hint="re-create the split with `visiondeck data split --force` (results made on "
            "the old split are then not comparable)",
        )
    return check
