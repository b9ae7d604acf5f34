"""From out-of-fold probabilities and embeddings to a ranked list of suspect images.

Three kinds of suspect, each for its own reason:

- **label issues** — confident learning (`cleanlab.filter.find_label_issues`, pruning by the
  estimated noise rate of each class pair) proposes the candidates: images whose given label
  the out-of-fold model contradicts more than the data's own confusion between those two
  classes explains. cleanlab's count is an estimate of *all* the labels the model disagrees
  with, so with a model of modest accuracy it takes in the model's own confusions (shirt vs
  T-shirt) as well as the wrong labels. A candidate is therefore **flagged** only when the
  model is confident in both directions, each judged by the per-class averages that
  cleanlab's confident joint uses: the suggested class is *confidently present* (its
  probability at least that class's mean self-confidence, `cleanlab.count.
  get_confident_thresholds`) and the given class *confidently absent* (its probability at
  most the mean probability the model gives that class on the images labelled otherwise).
  The other candidates are kept, ranked, as **possible** label issues: images the model
  doubts, but no more than it doubts a borderline image;
- **near-duplicates with another label** — two images whose embeddings (each fold model's
  penultimate layer, centred and L2-normalised, concatenated: the cosine is the mean over
  the fold models) are at least `dup_threshold` alike *and* whose pixels (as the model sees
  them) differ by at most `pixel_tolerance` of full scale on average, but which carry
  different labels: one of them is wrong, and the one whose label the model doubts more is
  listed, its twin beside it. The embedding alone is not enough: on a homogeneous set
  (Fashion-MNIST) most images have a neighbour above 0.95 that is merely the same kind of
  garment;
- **outliers** — images far from every other image in that embedding: their mean cosine
  distance to their `k` nearest neighbours lies above Tukey's far-out fence (Q3 + 3·IQR) of
  all images' distances, above twice the median distance and above 0.1.

Every suspect gets the same score, `1 − p(given label)` under the out-of-fold model
(cleanlab's self-confidence label quality, inverted): the most suspect first, whatever the
reason it was listed for. The suggested label is the out-of-fold model's top class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from visiondeck.audit.oof import OutOfFold

__all__ = [
    "AuditFindings",
    "Suspect",
    "confident_both_ways",
    "find_suspects",
    "nearest_neighbours",
]

REASONS = ("label", "near_duplicate", "outlier", "possible_label")
#: embedding cosine from which two images are near-duplicate candidates
DUP_THRESHOLD = 0.95
#: ... confirmed when their pixels differ by at most this share of full scale on average
PIXEL_TOLERANCE = 0.03
#: an outlier's mean cosine distance to its nearest images is at least this (similarity 0.9)
MIN_OUTLIER_DISTANCE = 0.1


@dataclass(frozen=True)
class Suspect:
    index: int  # position in the OutOfFold arrays
    path: str  # relpath under the source root
    given: str
    suggested: str
    score: float  # 1 − out-of-fold probability of the given label; higher = more suspect
    reasons: tuple[str, ...]
    duplicate: str | None = None  # the nearest image carrying another label
    duplicate_label: str | None = None
    similarity: float | None = None  # cosine to that image
    distance: float | None = None  # mean cosine distance to the k nearest images


@dataclass
class AuditFindings:
    suspects: list[Suspect]  # flagged, most suspect first (what suspects.csv lists)
    label_issues: list[int]  # flagged label issues, most suspect first
    near_duplicates: list[tuple[int, int, float]]  # (i, j, cosine), i < j, labels differ
    outliers: list[int]
    outlier_fence: float
    quality: np.ndarray = field(repr=False)  # cleanlab self-confidence of every image
    accuracy: float = 0.0  # out-of-fold accuracy against the given labels
    #: cleanlab's other candidates (not confident both ways), most suspect first
    possible_label_issues: list[int] = field(default_factory=list)
    #: those of them listed for no other reason: possible.csv, most suspect first
    possible: list[Suspect] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "suspects": len(self.suspects),
            "label_issues": len(self.label_issues),
            "cleanlab_candidates": len(self.label_issues) + len(self.possible_label_issues),
            "possible_label_issues": len(self.possible_label_issues),
            "near_duplicate_pairs": len(self.near_duplicates),
            "outliers": len(self.outliers),
        }


def nearest_neighbours(
    embeddings: np.ndarray, k: int, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most cosine-similar other rows of each row: (indices, similarities), both
    (N, k), most similar first. Rows must be L2-normalised; exact, in row chunks."""
    n = len(embeddings)
    k = max(1, min(k, n - 1))
    x = embeddings.astype(np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk):
        block = x[start : start + chunk] @ x.T
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = -np.inf  # never one's own neighbour
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        idx[start : start + chunk] = np.take_along_axis(part, order, axis=1)
        sim[start : start + chunk] = np.take_along_axis(values, order, axis=1)
    return idx, sim


def _same_pixels(oof: OutOfFold, i: int, j: int, tolerance: float) -> bool:
    """Mean absolute difference of the two model inputs, as a share of 255, within
    `tolerance` (True when the images are not at hand: the embedding decides alone)."""
    if oof.images is None:
        return True
    a = oof.images[i].astype(np.int16)
    b = oof.images[j].astype(np.int16)
    return float(np.abs(a - b).mean()) / 255.0 <= tolerance


def confident_both_ways(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Which images the model confidently puts in another class *and* confidently out of the
    given one: a boolean mask over the images.

    Both thresholds are per-class means, as in cleanlab's confident joint, so they follow the
    model's calibration rather than a fixed constant. "Confidently class j": p_j at least
    class j's mean self-confidence (`cleanlab.count.get_confident_thresholds`). "Confidently
    not class i": p_i at most the mean p_i over the images whose label is not i — the model
    sees no more of class i in this image than in an average image of another label. An
    image the model merely finds borderline between two classes it often confuses fails the
    second test, however its top class came out.
    """
    from cleanlab.count import get_confident_thresholds

    n, classes = probs.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    present = get_confident_thresholds(labels, probs)
    absent = np.full(classes, -np.inf)  # a class given to every image is never "absent"
    for c in range(classes):
        others = labels != c
        if others.any():
            absent[c] = probs[others, c].mean()
    rows = np.arange(n)
    top = probs.argmax(axis=1)
    return (
        (top != labels)
        & (probs[rows, top] >= present[top])
        & (probs[rows, labels] <= absent[labels])
    )


def find_suspects(
    oof: OutOfFold,
    *,
    dup_threshold: float = DUP_THRESHOLD,
    pixel_tolerance: float = PIXEL_TOLERANCE,
    k: int = 10,
    fence: float = 3.0,
) -> AuditFindings:
    """Label issues (cleanlab's candidates the model is confident about both ways), near-
    duplicates with another label and outliers; the other candidates as possible issues."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels, probs = oof.labels, oof.probs
    n = len(labels)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    candidates = find_label_issues(
        labels,
        probs,
        filter_by="prune_by_noise_rate",
        return_indices_ranked_by="self_confidence",
        n_jobs=1,
    )
    sure = confident_both_ways(labels, probs)
    issues = [int(i) for i in candidates if sure[i]]
    maybe = [int(i) for i in candidates if not sure[i]]

    neighbours, sims = (
        nearest_neighbours(oof.embeddings, k)
        if n > 1
        else (np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32))
    )
    pairs: dict[tuple[int, int], float] = {}
    nearest_other: dict[int, tuple[int, float]] = {}
    for i in range(n):
        for j, s in zip(neighbours[i].tolist(), sims[i].tolist(), strict=True):
            if s < dup_threshold:
                break
            if labels[j] == labels[i] or not _same_pixels(oof, i, j, pixel_tolerance):
                continue
            pairs.setdefault((min(i, j), max(i, j)), s)
            # one of the two is wrong: list the one whose label the model doubts more
            doubted = i if (quality[i], i) <= (quality[j], j) else j
            nearest_other.setdefault(doubted, (j if doubted == i else i, s))
    distance = 1.0 - sims.mean(axis=1) if sims.size else np.zeros(n, np.float32)
    q1, median, q3 = np.percentile(distance, [25, 50, 75]) if n else (0.0, 0.0, 0.0)
    # Tukey's far-out fence, at least twice the typical distance and MIN_OUTLIER_DISTANCE:
    # in a set whose images are all alike (a tiny spread) a slightly odd one is no outlier
    limit = float(max(q3 + fence * (q3 - q1), 2 * median, MIN_OUTLIER_DISTANCE))
    outliers = [int(i) for i in np.flatnonzero(distance > limit)]

    reasons: dict[int, list[str]] = {}
    for i in issues:
        reasons.setdefault(i, []).append("label")
    for i in nearest_other:
        reasons.setdefault(i, []).append("near_duplicate")
    for i in outliers:
        reasons.setdefault(i, []).append("outlier")
    for i in maybe:
        reasons.setdefault(i, []).append("possible_label")
    suggested = probs.argmax(axis=1)
    suspects, possible = [], []
    for i, why in reasons.items():
        dup = nearest_other.get(i)
        # a possible label issue is flagged anyway when it is also a twin or an outlier
        listed = possible if why == ["possible_label"] else suspects
        listed.append(
            Suspect(
                i,
                oof.relpaths[i],
                oof.classes[labels[i]],
                oof.classes[suggested[i]],
                round(float(1.0 - quality[i]), 6),
                tuple(why),
                oof.relpaths[dup[0]] if dup else None,
                oof.classes[labels[dup[0]]] if dup else None,
                round(dup[1], 6) if dup else None,
                round(float(distance[i]), 6),
            )
        )
    suspects.sort(key=lambda s: (-s.score, s.path))
    possible.sort(key=lambda s: (-s.score, s.path))
    return AuditFindings(
        suspects,
        issues,
        sorted((i, j, s) for (i, j), s in pairs.items()),
        outliers,
        limit,
        quality,
        float((suggested == labels).mean()) if n else 0.0,
        maybe,
        possible,
    )
