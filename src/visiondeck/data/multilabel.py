"""Multi-label data: label sets as strings, label matrices, statistics, iterative stratification.

A multi-label file carries a *set* of labels (a chest X-ray showing two findings, or none).
Everything upstream of training keeps one string per file, so catalogs, splits and their
content hashes work unchanged: the set is written sorted and joined by `|` ("a|c"; the
empty set is ""). The label list of a multi-label task is the union of the labels seen,
sorted, exactly as class names are for single-label data.

A per-class split cannot work when a file has several classes, and a random one loses rare
labels from the smaller subsets. `iterative_stratify` (Sechidis, Tsoumakas & Vlahavas 2011,
"On the stratification of multi-label data") hands out the rarest label first, so every
label with enough files reaches every subset; it works on groups (near-duplicate files),
which always stay together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "LABEL_SEPARATOR",
    "MULTILABEL",
    "SINGLE",
    "TASKS",
    "cooccurrence",
    "iterative_stratify",
    "join_labels",
    "label_counts",
    "label_matrix",
    "label_names",
    "split_labels",
]

LABEL_SEPARATOR = "|"
SINGLE = "single"
MULTILABEL = "multilabel"
TASKS = (SINGLE, MULTILABEL)


def split_labels(text: str) -> list[str]:
    """The labels of one file ("a|c" → ["a", "c"]; "" → [])."""
    return [part.strip() for part in text.split(LABEL_SEPARATOR) if part.strip()]


def join_labels(labels: Iterable[str]) -> str:
    """The canonical string of a label set: sorted, de-duplicated, joined by `|`."""
    return LABEL_SEPARATOR.join(sorted({str(label).strip() for label in labels
                                        if str(label).strip()}))


def label_names(texts: Iterable[str]) -> list[str]:
    """Every label used by a collection of label-set strings, sorted."""
    names: set[str] = set()
    for text in texts:
        names.update(split_labels(text))
    return sorted(names)


def label_matrix(texts: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """uint8 (N, K): row i has a 1 for each label of file i (unknown labels are an error)."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(texts), len(classes)), dtype=np.uint8)
    for row, text in enumerate(texts):
        for label in split_labels(text):
            if label not in index:
                raise ValueError(f"label {label!r} is not one of {list(classes)}")
            matrix[row, index[label]] = 1
    return matrix


def label_counts(texts: Sequence[str], classes: Sequence[str]) -> dict[str, int]:
    """Files carrying each label."""
    counts = label_matrix(texts, classes).sum(axis=0)
    return {c: int(n) for c, n in zip(classes, counts, strict=True)}


def cooccurrence(texts: Sequence[str], classes: Sequence[str]) -> list[list[int]]:
    """(K, K) counts of files carrying both labels; the diagonal is each label's count."""
    matrix = label_matrix(texts, classes).astype(np.int64)
    return (matrix.T @ matrix).tolist()


def iterative_stratify(labels: np.ndarray, fractions: Sequence[float], *, seed: int = 0,
                       sizes: np.ndarray | None = None) -> np.ndarray:
    """Assign each unit (a file, or a group of files) to a subset, label by label.

    labels: (N, K) 0/1 (or counts, for groups: the files of the group carrying each label);
    fractions: the desired share of each subset (summing to 1); sizes: files per unit
    (default 1). Returns int (N,) subset indexes.

    The algorithm: keep, per subset, how many files and how many of each label it still
    wants. Repeatedly take the label with the fewest files still to place (ties: the
    earliest label), and give each unit carrying it to a subset that holds none of that
    label yet, if any, else to the subset that wants that label most (ties: the subset
    wanting most files overall, then at random). Units with no label left go to the subsets
    wanting the most files. The rarest labels are placed first, while every subset still
    wants them; the "none yet" rule is our addition to Sechidis et al.: a label on as many
    files as there are subsets reaches every one (proportions alone would send a label on 3
    files of a 70/15/15 split twice to train).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    fractions = np.asarray(fractions, dtype=np.float64)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError("fractions must be non-negative and sum to 1")
    sizes = np.ones(n, dtype=np.int64) if sizes is None else np.asarray(sizes, dtype=np.int64)
    rng = np.random.default_rng(seed)
    wanted_files = fractions * sizes.sum()
    wanted_labels = fractions[:, None] * labels.sum(axis=0)[None, :].astype(np.float64)
    assigned = np.full(n, -1, dtype=np.int64)
    remaining = labels.astype(np.float64).copy()
    open_ = fractions > 0
    placed = np.zeros((len(fractions), labels.shape[1]), dtype=bool)
    while True:
        left = remaining[assigned < 0].sum(axis=0)
        present = np.flatnonzero(left > 0)
        if not present.size:
            break
        label = int(present[np.argmin(left[present])])
        units = np.flatnonzero((assigned < 0) & (remaining[:, label] > 0))
        for unit in rng.permutation(units):
            lacking = open_ & ~placed[:, label]
            subset = _pick(wanted_labels[:, label], wanted_files,
                           lacking if lacking.any() else open_, rng)
            assigned[unit] = subset
            placed[subset] |= labels[unit] > 0
            wanted_labels[subset] -= labels[unit]
            wanted_files[subset] -= sizes[unit]
    for unit in rng.permutation(np.flatnonzero(assigned < 0)):
        subset = _pick(wanted_files, wanted_files, open_, rng)
        assigned[unit] = subset
        wanted_files[subset] -= sizes[unit]
    return assigned


def _pick(first: np.ndarray, second: np.ndarray, open_: np.ndarray,
          rng: np.random.Generator) -> int:
    """The open subset with the largest `first`, ties broken by `second`, then at random."""
    candidates = np.flatnonzero(open_)
    best = candidates[first[candidates] == first[candidates].max()]
    if best.size > 1:
        best = best[second[best] == second[best].max()]
    return int(rng.choice(best)) if best.size > 1 else int(best[0])
