"""Out-of-fold predicted probabilities: every image scored by a model that never saw it.

Confident learning needs, for each image, class probabilities from a model that did not
train on that image; otherwise a network that memorised a wrong label vouches for it. The
audit therefore splits *all* usable images into k stratified folds (no held-out test share:
every image must get a score) and trains one model per fold with `evaluate.cv.train_fold`,
the cross-validation that `visiondeck evaluate --folds` uses. Each fold's model then scores
its held-out images (the out-of-fold probabilities) and embeds every image (the penultimate
layer), so near-duplicates and outliers are judged in the same feature space.

Each finished fold is written to `OUT/oof/fold-K.npz` with the split id and a digest of the
recipe; a rerun with the same data and recipe reuses it instead of training again, so a
killed audit resumes at the first unfinished fold.

Time budget: `budget_s` is shared out over the folds still to train. Before the first fold a
throughput probe (a few optimiser steps on random input of the recipe's shape) estimates the
seconds per epoch; after each fold the measured seconds per epoch (Lightning's set-up,
validation and checkpoints included) replace the estimate. A fold trains for as many whole
epochs as its share allows (at least one, at most the recipe's `train.epochs`), so its
learning-rate schedule runs to its end; Lightning's `max_time` caps it at twice its share in
case the estimate was off.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck._files import atomic_writer
from visiondeck.config import Recipe
from visiondeck.errors import VisionDeckError

__all__ = ["AuditError", "FoldPlan", "OutOfFold", "compute_oof", "plan_epochs"]

#: seconds kept back from the budget for scoring, ranking and the report
RESERVE_FRACTION = 0.1


class AuditError(VisionDeckError):
    exit_code = 5


@dataclass
class OutOfFold:
    """Out-of-fold probabilities and embeddings of every usable image, in split order."""

    root: Path
    classes: list[str]
    relpaths: list[str]
    labels: np.ndarray  # int64 (N,) given label index
    probs: np.ndarray  # float32 (N, K) out-of-fold softmax
    embeddings: np.ndarray  # float32 (N, folds × D), each fold's part centred, L2-normalised
    fold_of: np.ndarray  # int64 (N,) the fold that held each image out
    split_id: str
    prepared: Path
    trained: list[int] = field(default_factory=list)  # folds trained in this call
    reused: list[int] = field(default_factory=list)  # folds read back from disk
    epochs: dict[int, int] = field(default_factory=dict)  # fold → epochs it trained
    images: np.ndarray | None = None  # uint8 (N, C, H, W) as the model saw them


@dataclass(frozen=True)
class FoldPlan:
    epochs: int
    max_minutes: float | None


def plan_epochs(
    remaining_s: float | None, folds_left: int, seconds_per_epoch: float, max_epochs: int
) -> FoldPlan:
    """Epochs for the next fold: its share of the remaining budget over the time per epoch.

    Without a budget the recipe's epochs are used unchanged.
    """
    if remaining_s is None:
        return FoldPlan(max_epochs, None)
    share = max(remaining_s, 0.0) / max(folds_left, 1)
    epochs = int(share // max(seconds_per_epoch, 1e-6))
    return FoldPlan(min(max(epochs, 1), max_epochs), max(2 * share, 6.0) / 60.0)


def recipe_digest(recipe: Recipe) -> str:
    """What decides a fold's model: everything in the recipe but its name, where it keeps
    its files, and its epochs (the budget may give a resumed fold other epochs; its result
    is still valid)."""
    dump = recipe.model_dump(mode="json")
    dump.pop("name", None)
    dump.pop("output_dir", None)
    dump.pop("tracking", None)  # where runs are logged changes no model
    dump.get("data", {}).pop("prepared", None)  # the audit folder: a copy may move
    dump.get("train", {}).pop("epochs", None)
    dump.get("train", {}).pop("max_minutes", None)
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def audit_recipe(recipe: Recipe, folds: int, out_dir: Path) -> Recipe:
    """The recipe with a k-fold split of every image (no test share), kept in OUT/prepared."""
    if folds < 2:
        raise AuditError(f"an audit needs at least 2 folds, not {folds}")
    data = recipe.data.model_copy(
        update={
            "folds": folds,
            "test_fraction": 0.0,
            "val_fraction": 0.0,
            "test_source": None,
            "prepared": str(out_dir / "prepared"),
        }
    )
    train = recipe.train.model_copy(update={"min_val_accuracy": None, "devices": 1, "num_nodes": 1})
    return recipe.model_copy(update={"data": data, "train": train})


def compute_oof(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    *,
    folds: int = 5,
    budget_s: float | None = None,
    progress: bool = False,
    force: bool = False,
    on_fold: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> OutOfFold:
    """Train (or reuse) one model per fold and gather out-of-fold probabilities.

    `force` re-splits when the data changed since OUT's split was made (its folds are then
    trained again: they are keyed by the split). `on_fold(k, "trained"|"reused", info)`
    reports each fold as it ends.
    """
    from visiondeck.data.catalog import decode_limits
    from visiondeck.data.prepare import prepare_split
    from visiondeck.evaluate.predict import decode_subset
    from visiondeck.models import model_spec
    from visiondeck.train.datamodule import resolve_spec

    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = audit_recipe(recipe, folds, out)
    outcome = prepare_split(recipe.data, progress=progress, force=force)
    split = outcome.split
    if len(split.classes) < 2:
        raise AuditError("an audit needs at least two classes", hint=f"found only {split.classes}")
    small = [c for c, n in split.counts()["train"].items() if n < folds]
    if small:
        raise AuditError(
            f"classes with fewer images than folds: {small}",
            hint=f"use fewer folds than {folds}, or add images",
        )
    records = [r for r in split.records if r.fold >= 0]
    info = model_spec(recipe.model.name)
    spec = resolve_spec(
        recipe.data,
        info.mean if recipe.model.pretrained else None,
        info.std if recipe.model.pretrained else None,
    )
    arrays = decode_subset(
        split.root,
        records,
        split.classes,
        spec,
        limits=decode_limits(recipe.data),
        cache_dir=outcome.check.prepared / "cache",
        workers=recipe.data.num_workers,
    )
    by_path = {r.relpath: r.fold for r in records}
    fold_of = np.array([by_path[p] for p in arrays.relpaths], dtype=np.int64)
    key = {"split_id": split.id, "recipe": recipe_digest(recipe), "folds": folds}
    oof_dir = out / "oof"
    oof_dir.mkdir(exist_ok=True)

    n, k = len(arrays.relpaths), len(split.classes)
    probs = np.zeros((n, k), dtype=np.float32)
    parts: list[np.ndarray] = []
    result = OutOfFold(
        split.root,
        list(split.classes),
        list(arrays.relpaths),
        arrays.labels,
        probs,
        np.zeros((n, 0), dtype=np.float32),
        fold_of,
        split.id,
        outcome.check.prepared,
        images=arrays.images,
    )
    finished = {
        f: _load_fold(oof_dir / f"fold-{f}.npz", key, arrays.relpaths) for f in range(folds)
    }
    probe: float | None = None
    measured: list[float] = []  # seconds per epoch of the folds trained so far
    for fold in range(folds):
        saved = finished[fold]
        if saved is not None:
            result.reused.append(fold)
            result.epochs[fold] = saved["epochs"]
            status = "reused"
        else:
            if budget_s is not None and not measured and probe is None:
                probe = _probe_epoch_seconds(recipe, spec, int((fold_of != fold).sum()))
            remaining = (
                None
                if budget_s is None
                else budget_s * (1 - RESERVE_FRACTION) - (time.monotonic() - started)
            )
            left = sum(1 for f in range(fold, folds) if finished[f] is None)
            per_epoch = sum(measured) / len(measured) if measured else (probe or 0.0)
            plan = plan_epochs(remaining, left, per_epoch, recipe.train.epochs)
            saved = _train_fold(
                recipe,
                fold,
                out / "folds" / f"fold-{fold}",
                plan,
                arrays,
                fold_of,
                progress=progress,
            )
            measured.append(saved["seconds"] / max(saved["epochs"], 1))
            _save_fold(oof_dir / f"fold-{fold}.npz", key, arrays.relpaths, saved)
            result.trained.append(fold)
            result.epochs[fold] = saved["epochs"]
            status = "trained"
        held = fold_of == fold
        probs[held] = saved["probs"]
        parts.append(_centre_normalise(saved["embeddings"]))
        if on_fold is not None:
            on_fold(
                fold,
                status,
                {
                    "epochs": result.epochs[fold],
                    "accuracy": float((saved["probs"].argmax(1) == arrays.labels[held]).mean()),
                },
            )
    result.embeddings = np.concatenate(parts, axis=1) / math.sqrt(folds)
    return result


def _train_fold(
    recipe: Recipe,
    fold: int,
    run: Path,
    plan: FoldPlan,
    arrays: Any,
    fold_of: np.ndarray,
    *,
    progress: bool,
) -> dict[str, Any]:
    """Train fold `fold` from scratch; its held-out probabilities and everyone's embedding."""
    from visiondeck.evaluate.cv import train_fold
    from visiondeck.train.artifacts import load_trained

    if run.exists():  # an interrupted attempt: start the fold afresh
        shutil.rmtree(run)
    train = recipe.train.model_copy(update={"epochs": plan.epochs, "max_minutes": plan.max_minutes})
    fold_recipe = recipe.model_copy(
        update={"name": f"{recipe.name}-audit-fold{fold}", "train": train}
    )
    begun = time.monotonic()
    train_fold(fold_recipe, fold, run, progress=progress)
    seconds = time.monotonic() - begun
    info = json.loads((run / "run.json").read_text())
    trained = load_trained(run)
    logits, embeddings = predict_with_embeddings(trained.model, arrays.images, trained.spec)
    held = fold_of == fold
    return {
        "probs": softmax(logits[held]),
        "embeddings": embeddings,
        "epochs": int(info.get("epochs_run") or plan.epochs),
        "seconds": seconds,
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _centre_normalise(x: np.ndarray) -> np.ndarray:
    """Centred, then L2-normalised rows. Penultimate features after a ReLU are all positive,
    so every pair of raw vectors looks alike (cosine 0.97 for unrelated Fashion-MNIST
    images); without their common mean, the cosine tells images apart."""
    x = x.astype(np.float32)
    x = x - x.mean(axis=0, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def predict_with_embeddings(
    model: Any, images: np.ndarray, spec: Any, *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features (what the classifier reads) of uint8 (N, C, H, W).

    Networks with timm's interface give `forward_head(..., pre_logits=True)`; for any other
    the input of the final linear layer is caught with a hook.
    """
    import torch

    from visiondeck.evaluate.predict import _per_channel

    mean = _per_channel(spec.mean, spec.channels)
    std = _per_channel(spec.std, spec.channels)
    model.eval()
    logits_out, feats_out = [], []
    timm_like = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    caught: list[torch.Tensor] = []
    hook = None
    if not timm_like:
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        hook = last.register_forward_hook(lambda _m, args, _o: caught.append(args[0]))
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size].astype(np.float32) * (1.0 / 255.0)
                x = torch.from_numpy((chunk - mean) / std)
                if timm_like:
                    features = model.forward_features(x)
                    pooled = model.forward_head(features, pre_logits=True)
                    logits = model.forward_head(features)
                else:
                    caught.clear()
                    logits = model(x)
                    pooled = caught[-1]
                logits_out.append(logits.float().numpy())
                feats_out.append(pooled.float().flatten(1).numpy())
    finally:
        if hook is not None:
            hook.remove()
    if not logits_out:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits_out), np.concatenate(feats_out)


def _probe_epoch_seconds(recipe: Recipe, spec: Any, n_train: int, steps: int = 4) -> float:
    """Seconds one epoch should take: a few optimiser steps on random input, timed.

    Doubled for what the probe leaves out (augmentation, validation, checkpoints); the
    measured time of the first trained fold replaces it.
    """
    import torch

    from visiondeck.models import from_config

    model = from_config(
        recipe.model.model_copy(update={"pretrained": False, "weights": None}),
        num_classes=2,
        in_chans=spec.channels,
    )
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = min(recipe.train.batch_size, max(n_train, 1))
    x = torch.randn(batch, spec.channels, spec.image_size, spec.image_size)
    y = torch.zeros(batch, dtype=torch.long)
    model.train()

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()

    step()  # warm-up: allocations, kernel selection
    begun = time.perf_counter()
    for _ in range(steps):
        step()
    per_image = (time.perf_counter() - begun) / (steps * batch)
    return 2.0 * per_image * n_train + 1.0


def _load_fold(path: Path, key: dict[str, Any], relpaths: list[str]) -> dict[str, Any] | None:
    """A finished fold's saved arrays, if they were made from the same split and recipe."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("key") != key or meta.get("n") != len(relpaths):
                return None
            return {
                "probs": data["probs"],
                "embeddings": data["embeddings"],
                "epochs": int(meta["epochs"]),
                "seconds": float(meta["seconds"]),
            }
    except (OSError, ValueError, KeyError):
        return None  # a damaged file only costs training the fold again


def _save_fold(path: Path, key: dict[str, Any], relpaths: list[str], saved: dict[str, Any]) -> None:
    meta = {
        "key": key,
        "n": len(relpaths),
        "epochs": saved["epochs"],
        "seconds": round(saved["seconds"], 3),
    }
    with atomic_writer(path, binary=True) as handle:
        np.savez(
            handle,
            probs=saved["probs"].astype(np.float32),
            embeddings=saved["embeddings"].astype(np.float16),
            meta=np.array(json.dumps(meta)),
        )
