"""The automatic recipe: look at the training data, choose, and say why.

`auto_recipe(source)` checks and splits the data, profiles the training subset
(`data.profile`), and fills every recipe key the user did not set with a choice made from a
measurement — image size from the images' own sizes, channels from whether colour images are
really grey, the network from the image scale and the offline pretrained weights on this
machine, batch size and learning rate from the training-set size, augmentation from the image
scale, the set's size per class and a mirror test, class balancing from the measured
imbalance, normalisation from the data's own mean and std. A recipe file and `key=value`
overrides always win: a key they set is reported as theirs and never touched.

Multi-label data (a manifest of label sets) is profiled per label (`DataProfile.task`):
the loss is BCE per label, class balancing becomes a per-label `pos_weight` when a label is
rare (its negatives outnumber its positives more than `IMBALANCE_LIMIT` times), targets are
not smoothed, and the table of choices says how many labels an image carries and which
label is the rarest. The asymmetric loss is not chosen: no measurement here shows it
beating BCE on our data (`train.loss=asl` stays one override away).

`choose(profile, ...)` is the rule book itself, a pure function of the measurements, so each
rule is tested on profiles with known answers. The number of epochs is not chosen here: a
time budget sets it from a throughput probe (`train.budget`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondeck.config import (
    Recipe,
    apply_overrides,
    parse_overrides,
    read_recipe_file,
    validate_recipe,
)
from visiondeck.data.profile import DataProfile

__all__ = ["AutoPlan", "Choice", "auto_recipe", "choose", "flatten_keys"]

#: images whose typical side (median of sqrt(w × h)) is at most this train from scratch at
#: their own size on a small ResNet built for 28-64 px
SMALL_IMAGE = 64
#: smaller images are upsampled to this side: the small ResNets pool 2× three times, and
#: 24 px still leaves their last stage a 3×3 map (8 px leaves 1×1, where its 3×3
#: convolutions see mostly padding). On 8×8 digits, 1-minute runs: 98.9 % at 8 px, 99.3 %
#: at 16 and 99.6 % at 24 (two runs each, benchmarks/bench_auto.py digits)
SMALLEST_INPUT = 24
#: photos without offline pretrained weights train from scratch at this side
SCRATCH_PHOTO_SIDE = 64
#: validation/test images a split aims for (as a share of the set, within the bounds below)
HOLDOUT_IMAGES = 2000
HOLDOUT_MIN, HOLDOUT_MAX = 0.05, 0.15
#: max/min class count above which the loss weights classes (validate warns at the same)
IMBALANCE_LIMIT = 3.0
#: a mirror image must stay nearest its own class for this share of classes to flip
FLIP_CONSISTENT = 0.8
#: fewer training images per class than this: the stronger augmentation preset
FEW_PER_CLASS = 100
#: the offline transfer-learning network (see models/pretrained.py)
TRANSFER_MODEL = "efficientnet_lite0"
#: builtin data sets whose official test images are another builtin source
BUILTIN_TEST = {
    "builtin:fashion-mnist": "builtin:fashion-mnist/test",
    "builtin:fashion-mnist/train": "builtin:fashion-mnist/test",
}


@dataclass(frozen=True)
class Choice:
    """One recipe key: its value, who set it (auto, recipe or override) and why."""

    key: str
    value: Any
    why: str
    by: str = "auto"

    def to_json(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"key": self.key, "value": value, "why": self.why, "by": self.by}


@dataclass
class AutoPlan:
    """The resolved recipe, the profile it came from, and every choice with its reason."""

    recipe: Recipe
    profile: DataProfile
    choices: list[Choice]
    notes: dict[str, Any] = field(default_factory=dict)
    split: Any = None  # the SplitOutcome it profiled, reusable by `train_within(split=)`

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile.to_json(),
            "choices": [c.to_json() for c in self.choices],
            **self.notes,
        }


# --------------------------------------------------------------------------- the rules


def holdout_fraction(usable: int) -> float:
    """Share of the set held out for validation (and again for test): enough images to
    measure accuracy to about ±1 %, without starving training of a small set."""
    if usable <= 0:
        return HOLDOUT_MAX
    return round(min(HOLDOUT_MAX, max(HOLDOUT_MIN, HOLDOUT_IMAGES / usable)), 3)


def _pow2(value: float, low: int, high: int) -> int:
    return int(min(high, max(low, 2 ** round(math.log2(max(value, 1.0))))))


def choose(
    profile: DataProfile, *, transfer_weights: bool, gpu: bool = False
) -> dict[str, tuple[Any, str]]:
    """Every automatic choice for a profiled training set: key → (value, why).

    `transfer_weights`: ImageNet weights for the transfer network are on this machine;
    `gpu`: training runs on a GPU (wider networks cost little there).
    """
    c: dict[str, tuple[Any, str]] = {}
    side = profile.median_side
    per_class = profile.images / max(1, len(profile.classes))
    if profile.multilabel:
        rare = profile.rarest_label
        c["data.task"] = (
            "multilabel",
            f"label sets: {len(profile.classes)} labels, {profile.labels_per_image:.2f} per "
            f"image (at most {profile.max_labels_per_image}), {profile.unlabelled} images "
            f"with none; rarest {rare!r} on {profile.class_counts.get(rare, 0)} of "
            f"{profile.images}",
        )
        # an image of several labels serves each of them: positives per label
        per_class = sum(profile.class_counts.values()) / max(1, len(profile.classes))
    small = side <= SMALL_IMAGE
    transfer = not small and transfer_weights

    # ------------------------------------------------------------ the network
    if small:
        name = "resnet_small" if gpu else "resnet_small_t"
        width = "full width on a GPU" if gpu else "the narrowest for a CPU budget"
        c["model.name"] = (
            name,
            f"images are {side} px (≤ {SMALL_IMAGE}): a from-scratch "
            f"ResNet-9 built for 28-64 px, {width}",
        )
        c["model.pretrained"] = (
            False,
            "small images: ImageNet features do not transfer to this scale",
        )
        c["model.dropout"] = (
            0.0,
            "batch norm + label smoothing regularise; dropout slowed "
            "convergence in the Fashion-MNIST runs",
        )
    elif transfer:
        c["model.name"] = (
            TRANSFER_MODEL,
            f"photos ({side} px) and ImageNet weights for "
            f"{TRANSFER_MODEL} on this machine: transfer",
        )
        c["model.pretrained"] = (True, "offline ImageNet weights found")
        c["model.dropout"] = (0.2, "EfficientNet-Lite0's own head dropout")
    else:
        c["model.name"] = (
            "resnet_small",
            f"photos ({side} px) but no offline pretrained weights: a small ResNet from scratch",
        )
        c["model.pretrained"] = (False, "no offline weights for a transfer network")
        c["model.dropout"] = (0.0, "from scratch with batch norm")

    # ------------------------------------------------------------ input
    if small and side < SMALLEST_INPUT:
        size = SMALLEST_INPUT
        c["data.image_size"] = (
            size,
            f"median {side} px, upsampled to {size} px: the small ResNet's three 2× poolings "
            "then still leave a 3×3 map",
        )
    elif small:
        size = side
        c["data.image_size"] = (
            size,
            f"the images' own median size ({side} px): nothing to gain from upsampling",
        )
    elif transfer:
        size = int(min(224, max(96, 32 * round(side / 32))))
        c["data.image_size"] = (size, f"median {side} px, at most the weights' 224 px")
    else:
        size = min(SCRATCH_PHOTO_SIDE, side)
        c["data.image_size"] = (
            size,
            f"median {side} px, reduced to {size} px for a "
            "from-scratch network within a CPU budget",
        )
    if profile.square:
        c["data.resize"] = (
            "stretch",
            f"90 % of images within 10 % of square (aspect "
            f"{profile.aspect_p10}-{profile.aspect_p90})",
        )
    elif profile.aspect_varies:
        c["data.resize"] = (
            "letterbox",
            f"shapes vary (aspect {profile.aspect_p10}-"
            f"{profile.aspect_p90}): padding keeps each shape",
        )
    else:
        c["data.resize"] = (
            "stretch",
            f"every image has the same shape (aspect "
            f"{profile.aspect_median}): stretching distorts all "
            "alike",
        )
    grey = profile.grey
    c["data.channels"] = (
        1 if grey else 3,
        f"{profile.grey_share:.0%} of {profile.sampled} sampled images are "
        f"grey (colour ones included when their channels agree)",
    )
    if transfer:
        c["data.mean"] = (None, "the pretrained weights' own normalisation")
        c["data.std"] = (None, "the pretrained weights' own normalisation")
    else:
        c["data.mean"] = (profile.mean, f"measured on {profile.sampled} training images")
        c["data.std"] = (profile.std, f"measured on {profile.sampled} training images")

    # ------------------------------------------------------------ augmentation
    flip = profile.flip_consistency >= FLIP_CONSISTENT
    c["data.flip"] = (
        flip,
        f"mirrored class means stay nearest their own class for "
        f"{profile.flip_consistency:.0%} of classes "
        f"({'≥' if flip else '<'} {FLIP_CONSISTENT:.0%})",
    )
    if per_class < FEW_PER_CLASS and not small:
        c["data.augment"] = (
            "strong",
            f"{per_class:.0f} training images per class (< {FEW_PER_CLASS}): more augmentation",
        )
    elif size <= 32:
        c["data.augment"] = (
            "light",
            f"{size} px images: shifts of a pixel or two; zoom and rotation would blur them",
        )
    else:
        c["data.augment"] = ("standard", f"{size} px images: shift, zoom and rotation")

    # ------------------------------------------------------------ optimisation
    if transfer:
        batch = 64 if gpu else 32
        c["train.batch_size"] = (batch, "transfer at 224 px: small batches keep memory low")
        c["train.optimizer"] = ("adamw", "transfer: AdamW with discriminative learning rates")
        c["train.lr"] = (1e-3, "the head's rate; the backbone gets a tenth")
        c["train.weight_decay"] = (0.01, "AdamW's decoupled decay")
        c["train.backbone_lr_mult"] = (0.1, "pretrained layers move slowly")
        c["train.freeze"] = ("progressive", "head first, then one backbone stage per epoch")
        c["train.scheduler"] = ("cosine", "cosine with one warm-up epoch for the new head")
        c["train.warmup_epochs"] = (1.0, "the new head settles before the backbone moves")
    else:
        batch = _pow2(profile.images / 200, 32, 256)
        c["train.batch_size"] = (
            batch,
            f"{profile.images} training images / 200, as a power of 2 within 32-256",
        )
        lr = round(0.1 * math.sqrt(batch / 256), 4)
        c["train.optimizer"] = ("sgd", "from scratch: SGD with Nesterov momentum")
        c["train.lr"] = (lr, f"0.1 at batch 256, square-root scaled to batch {batch}")
        c["train.weight_decay"] = (5e-4, "the usual decay for SGD on small ResNets")
        c["train.scheduler"] = (
            "onecycle",
            "one cycle laid over the whole run, so the accuracy is made in the final annealing",
        )
    if profile.multilabel:
        _choose_multilabel(profile, c)
        return c
    c["train.label_smoothing"] = (
        0.1,
        f"{len(profile.classes)} classes: smoothing curbs over-confident logits",
    )
    if profile.imbalance > IMBALANCE_LIMIT:
        c["train.balance"] = (
            "weights",
            f"largest/smallest class = {profile.imbalance:.1f} (> {IMBALANCE_LIMIT:g})",
        )
    else:
        c["train.balance"] = (
            "none",
            f"largest/smallest class = {profile.imbalance:.1f} (≤ {IMBALANCE_LIMIT:g})",
        )
    c["train.patience"] = (
        None,
        "the schedule ends at the budget and the best epoch is "
        "kept: stopping early would cut the annealing",
    )
    return c


def _choose_multilabel(profile: DataProfile, c: dict[str, tuple[Any, str]]) -> None:
    """The loss and balancing keys of a multi-label set (the rest is shared)."""
    c["train.loss"] = (
        "ce",
        "label sets: binary cross-entropy per label (a sigmoid each); the asymmetric loss "
        "is not chosen without a measurement that it helps",
    )
    c["train.label_smoothing"] = (
        0.0,
        "label sets: BCE targets stay 0/1 (smoothing would cap every probability at 0.95, "
        "which per-label calibration would then have to undo)",
    )
    rare, weight = profile.rarest_label, profile.max_pos_weight
    positives = profile.class_counts.get(rare, 0)
    if weight > IMBALANCE_LIMIT:
        c["train.balance"] = (
            "weights",
            f"rarest label {rare!r} on {positives} of {profile.images} images: negatives/"
            f"positives = {weight:.1f} (> {IMBALANCE_LIMIT:g}), a pos_weight per label",
        )
    else:
        c["train.balance"] = (
            "none",
            f"rarest label {rare!r} on {positives} of {profile.images} images: negatives/"
            f"positives = {weight:.1f} (≤ {IMBALANCE_LIMIT:g})",
        )
    c["train.patience"] = (
        None,
        "the schedule ends at the budget and the best epoch (by val_map) is kept: "
        "stopping early would cut the annealing",
    )


# --------------------------------------------------------------------------- resolving


def flatten_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys set in a nested recipe mapping (`{"train": {"lr": 1}}` → {"train.lr"})."""
    keys: set[str] = set()
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            keys |= flatten_keys(value, dotted + ".")
        else:
            keys.add(dotted)
    return keys


def _source_name(source: str) -> str:
    text = source.removeprefix("builtin:").rstrip("/")
    stem = Path(text).stem if not source.startswith("builtin:") else text.replace("/", "-")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "data"
    return name if name[0].isalnum() else f"run-{name}"


def auto_recipe(
    source: str | None = None,
    *,
    recipe_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
    gpu: bool | None = None,
) -> AutoPlan:
    """Check, split and profile the data, then resolve a recipe: the user's keys first.

    `source` stands for `data.source=SOURCE`; `force` lets a changed split be rewritten
    (as `visiondeck train --force`).
    """
    from visiondeck.data.catalog import decode_limits
    from visiondeck.data.prepare import check_data, prepare_split
    from visiondeck.data.profile import profile_split
    from visiondeck.models import model_spec

    raw = read_recipe_file(recipe_path) if recipe_path is not None else {}
    given = parse_overrides(overrides)
    if source is not None:
        given = {"data.source": source, **given}
    from_recipe = flatten_keys(raw)
    fixed = from_recipe | set(given)
    base = validate_recipe(apply_overrides(raw, given), source=str(recipe_path or "defaults"))
    data = base.data

    pre: dict[str, tuple[Any, str]] = {}
    if data.source in BUILTIN_TEST and "data.test_source" not in fixed:
        pre["data.test_source"] = (BUILTIN_TEST[data.source], "the data set's official test images")
    check = check_data(
        data.source,
        prepared=data.prepared,
        limits=decode_limits(data),
        workers=data.num_workers,
        progress=progress,
        size_outliers=data.min_size is None,
    )
    usable = len(check.report.usable)
    share = holdout_fraction(usable)
    pre["data.val_fraction"] = (
        share,
        f"{usable} usable images: about {HOLDOUT_IMAGES} "
        f"held out, {HOLDOUT_MIN:.0%}-{HOLDOUT_MAX:.0%}",
    )
    pre["data.test_fraction"] = (share, pre["data.val_fraction"][1])
    if "name" not in fixed:
        pre["name"] = (_source_name(data.source), "named after the data source")
    split_raw = apply_overrides(
        base.model_dump(mode="json"), {k: v for k, (v, _) in pre.items() if k not in fixed}
    )
    split_cfg = validate_recipe(split_raw, source="auto").data
    outcome = prepare_split(split_cfg, force=force, progress=progress)
    profile = profile_split(outcome.split, outcome.check.catalog, seed=split_cfg.seed)

    if gpu is None:
        import torch

        gpu = torch.cuda.is_available() and base.train.accelerator in ("auto", "gpu")
    weights = model_spec(TRANSFER_MODEL).offline_weights
    chosen = {**pre, **choose(profile, transfer_weights=weights, gpu=gpu)}
    auto_values = {k: v for k, (v, _) in chosen.items() if k not in fixed}
    resolved = validate_recipe(
        apply_overrides(apply_overrides(raw, auto_values), given), source="auto"
    )
    choices = []
    for key, (value, why) in chosen.items():
        if key in given:
            choices.append(
                Choice(key, _lookup(resolved, key), "set on the command line", "override")
            )
        elif key in from_recipe:
            choices.append(Choice(key, _lookup(resolved, key), f"set in {recipe_path}", "recipe"))
        else:
            choices.append(Choice(key, value, why))
    notes = {
        "source": data.source,
        "split_id": outcome.split.id,
        "transfer_weights": weights,
        "gpu": gpu,
    }
    return AutoPlan(resolved, profile, choices, notes, outcome)


def _lookup(recipe: Recipe, dotted: str) -> Any:
    node: Any = recipe
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
