"""A profile of the training images: what the automatic recipe (`train.auto`) decides from.

Sizes and class counts come from every file (the catalog already holds each file's width and
height); what needs pixels — grey or colour, mean and std, whether a mirror image still looks
like its own class — comes from a bounded, seeded sample decoded with the one safe decoder
(`visiondeck.imaging`), so profiling a million images costs the same as profiling a thousand.
Nothing here is borrowed from another data set: the mean and std are this data's own.

Multi-label data (label sets "a|b") is profiled per label: `class_counts` holds each
label's positives (files carrying it), with the labels per image and the files without any
label beside them; an image counts towards the mirror test of every label it carries, and
the test compares what each label adds to the sample's mean image (a label's mean minus the
overall mean).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.data.multilabel import MULTILABEL, SINGLE, split_labels
from visiondeck.imaging import DecodeLimits, ImageDecodeError, decode_image

__all__ = ["DataProfile", "profile_images", "profile_split"]

#: images decoded for the pixel statistics (sizes and counts always use every file)
DEFAULT_SAMPLE = 512
#: ... and no more pixels than this once 32 images are in (large photos): a bound on the
#: profile's cost that, unlike a time limit, picks the same images on every run
PIXEL_BUDGET = 400_000_000
#: the profile's decoder: big JPEGs are decoded at a reduced scale (statistics do not need
#: every pixel), other formats above 16 MP are left out of the sample
PROFILE_LIMITS = DecodeLimits(max_pixels=16_000_000, reduce_jpeg=True, min_side=1)
#: a colour image is grey when 99 % of its pixels have channels this close (0..255); JPEG
#: chroma noise on a saved grey picture stays well below it, a real colour photo does not
GREY_TOLERANCE = 12
#: share of sampled images that must be grey for the set to be treated as grey
GREY_SHARE = 0.95
#: side of the small class-mean images the mirror test compares
_MEAN_SIDE = 16
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R 601-2, as PIL's "L"


@dataclass(frozen=True)
class DataProfile:
    """Measured properties of a training set (see the module docstring for how)."""

    images: int
    classes: list[str]
    class_counts: dict[str, int]  # multi-label: each label's positives (files carrying it)
    median_width: int
    median_height: int
    median_side: int  # median of sqrt(width × height): the typical scale of an image
    min_side_p5: int  # 5th percentile of the smaller side
    aspect_median: float  # width / height
    aspect_p10: float
    aspect_p90: float
    sampled: int  # images decoded for the pixel statistics
    grey_share: float  # share of sampled images whose colour channels are (nearly) equal
    mean: tuple[float, ...]  # 1 value for grey data, 3 (RGB) for colour, in 0..1
    std: tuple[float, ...]
    #: share of classes whose mirrored mean image is still nearest its own class mean;
    #: below 1 a horizontal flip turns some class into another (digits, letters)
    flip_consistency: float
    unreadable: list[str] = field(default_factory=list)
    task: str = SINGLE  # or "multilabel": the fields below then describe the label sets
    labels_per_image: float = 1.0  # mean size of an image's label set
    max_labels_per_image: int = 1
    unlabelled: int = 0  # multi-label images carrying no label at all

    @property
    def multilabel(self) -> bool:
        return self.task == MULTILABEL

    @property
    def grey(self) -> bool:
        return self.grey_share >= GREY_SHARE

    @property
    def imbalance(self) -> float:
        counts = [c for c in self.class_counts.values()]
        return max(counts) / min(counts) if counts and min(counts) else float("inf")

    @property
    def rarest_label(self) -> str:
        """The class (label) with the fewest training files."""
        return min(self.classes, key=lambda c: (self.class_counts.get(c, 0), c))

    @property
    def max_pos_weight(self) -> float:
        """Multi-label: the largest negatives / positives over the labels (the rarest
        label's BCE `pos_weight` under `train.balance=weights`)."""
        positives = self.class_counts.get(self.rarest_label, 0)
        return (self.images - positives) / positives if positives else float("inf")

    @property
    def square(self) -> bool:
        """Nearly every image is within 10 % of square."""
        return self.aspect_p10 >= 0.9 and self.aspect_p90 <= 1 / 0.9

    @property
    def aspect_varies(self) -> bool:
        """The images come in clearly different shapes (p90 / p10 of the aspect > 1.25)."""
        return self.aspect_p90 / self.aspect_p10 > 1.25

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(grey=self.grey, imbalance=round(self.imbalance, 3))
        if self.multilabel:
            data.update(rarest_label=self.rarest_label,
                        max_pos_weight=round(self.max_pos_weight, 3))
        data["unreadable"] = self.unreadable[:20]
        return data


def profile_images(
    root: str | os.PathLike[str],
    items: Sequence[tuple[str, str]],
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    limits: DecodeLimits | None = None,
    multilabel: bool = False,
    classes: Sequence[str] | None = None,
) -> DataProfile:
    """Profile labelled files `(relpath, label)` below `root`.

    `sizes` (relpath → (width, height), e.g. from the catalog) gives every file's size
    without decoding; files it lacks are measured from the sample only. `multilabel`:
    labels are label sets "a|b" (counted per label); `classes`: the full label list (a
    label absent from these files then counts 0).
    """
    if not items:
        raise ValueError("no images to profile")
    root = Path(root)
    limits = limits or PROFILE_LIMITS
    sets = [split_labels(label) if multilabel else [label] for _, label in items]
    counts = Counter(name for labels in sets for name in labels)
    classes = sorted(set(classes or ()) | set(counts))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(items), size=min(sample, len(items)), replace=False))

    measured: dict[str, tuple[int, int]] = dict(sizes or {})
    stats = _PixelStats(classes, contrast=multilabel)
    unreadable: list[str] = []
    pixels = 0
    for index in chosen:
        if pixels >= PIXEL_BUDGET and stats.n >= 32:
            break
        relpath = items[int(index)][0]
        try:
            decoded = decode_image(str(root / relpath), mode="RGB", limits=limits)
        except (ImageDecodeError, OSError):
            unreadable.append(relpath)
            continue
        array = decoded.array
        pixels += array.shape[0] * array.shape[1]
        measured.setdefault(relpath, (array.shape[1], array.shape[0]))
        stats.add(array, sets[int(index)])
    known = [measured[r] for r, _ in items if r in measured]
    if not known or stats.n == 0:
        raise ValueError(f"none of the {len(chosen)} sampled images could be decoded")
    widths = np.array([w for w, _ in known], dtype=np.float64)
    heights = np.array([h for _, h in known], dtype=np.float64)
    aspects = widths / heights
    mean, std = stats.moments()
    return DataProfile(
        images=len(items),
        classes=classes,
        class_counts={c: counts[c] for c in classes},
        median_width=int(np.median(widths)),
        median_height=int(np.median(heights)),
        median_side=round(float(np.median(np.sqrt(widths * heights)))),
        min_side_p5=int(np.percentile(np.minimum(widths, heights), 5)),
        aspect_median=round(float(np.median(aspects)), 4),
        aspect_p10=round(float(np.percentile(aspects, 10)), 4),
        aspect_p90=round(float(np.percentile(aspects, 90)), 4),
        sampled=stats.n,
        grey_share=round(stats.grey / stats.n, 4),
        mean=mean,
        std=std,
        flip_consistency=stats.flip_consistency(),
        unreadable=unreadable,
        task=MULTILABEL if multilabel else SINGLE,
        labels_per_image=round(float(np.mean([len(x) for x in sets])), 4),
        max_labels_per_image=max(len(x) for x in sets),
        unlabelled=sum(1 for x in sets if not x),
    )


def profile_split(
    split: Any,
    catalog: Any | None = None,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    limits: DecodeLimits | None = None,
) -> DataProfile:
    """Profile the training subset of a `Split` (sizes from `catalog` when given)."""
    records = split.subset("train") or split.records
    multilabel = bool(getattr(split, "multilabel", False))
    sizes = None
    if catalog is not None:
        sizes = {e.relpath: (e.width, e.height) for e in catalog.entries if e.width}
    return profile_images(
        split.root,
        [(r.relpath, r.label) for r in records],
        sizes=sizes,
        sample=sample,
        seed=seed,
        limits=limits,
        multilabel=multilabel,
        classes=list(split.classes) if multilabel else None,
    )


class _PixelStats:
    """Running per-image moments in RGB and luma, grey counts and small class means."""

    def __init__(self, classes: list[str], *, contrast: bool = False) -> None:
        self.index = {c: i for i, c in enumerate(classes)}
        #: multi-label: compare what each label adds to the mean image of the whole
        #: sample (its mean minus the overall mean), since every label's mean image also
        #: holds the other labels of its images and would look alike otherwise
        self.contrast = contrast
        self.all_sum = np.zeros((_MEAN_SIDE, _MEAN_SIDE))
        self.n = 0
        self.grey = 0
        self.rgb_mean = np.zeros(3)
        self.rgb_sq = np.zeros(3)
        self.luma_mean = 0.0
        self.luma_sq = 0.0
        self.class_sum = np.zeros((len(classes), _MEAN_SIDE, _MEAN_SIDE))
        self.class_n = np.zeros(len(classes))

    def add(self, array: np.ndarray, labels: Sequence[str]) -> None:
        """One decoded RGB image; it counts towards the mean image of each of `labels`."""
        from PIL import Image

        pixels = array.reshape(-1, 3).astype(np.float64)
        spread = pixels.max(axis=1) - pixels.min(axis=1)
        self.grey += bool(np.percentile(spread, 99) <= GREY_TOLERANCE)
        scaled = pixels / 255.0
        self.rgb_mean += scaled.mean(axis=0)
        self.rgb_sq += (scaled**2).mean(axis=0)
        luma = scaled @ _LUMA
        self.luma_mean += float(luma.mean())
        self.luma_sq += float((luma**2).mean())
        self.n += 1
        small = (
            Image.fromarray(array)
            .convert("L")
            .resize((_MEAN_SIDE, _MEAN_SIDE), Image.Resampling.BILINEAR)
        )
        small_array = np.asarray(small, dtype=np.float64) / 255.0
        self.all_sum += small_array
        for label in labels:
            self.class_sum[self.index[label]] += small_array
            self.class_n[self.index[label]] += 1

    def moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std over the sample (each image weighs the same, whatever its size)."""
        if self.grey >= GREY_SHARE * self.n:
            mean = self.luma_mean / self.n
            var = self.luma_sq / self.n - mean**2
            return (round(mean, 4),), (round(float(np.sqrt(max(var, 1e-6))), 4),)
        mean_rgb = self.rgb_mean / self.n
        var_rgb = np.maximum(self.rgb_sq / self.n - mean_rgb**2, 1e-6)
        return (
            tuple(round(float(v), 4) for v in mean_rgb),
            tuple(round(float(v), 4) for v in np.sqrt(var_rgb)),
        )

    def flip_consistency(self) -> float:
        """Share of classes whose mirrored mean image is nearest its own class mean."""
        present = self.class_n > 0
        if present.sum() < 2:
            return 1.0
        means = self.class_sum[present] / self.class_n[present, None, None]
        if self.contrast:
            means = means - self.all_sum / max(1, self.n)
        flipped = means[:, :, ::-1]
        distances = ((flipped[:, None] - means[None]) ** 2).sum(axis=(2, 3))
        return round(float((distances.argmin(axis=1) == np.arange(len(means))).mean()), 4)
