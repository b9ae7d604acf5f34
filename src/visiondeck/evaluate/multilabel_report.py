"""The multi-label evaluation report: one self-contained report.html, like the single-label one.

Per label: support, the threshold chosen on validation and what it gives on the scored
split, AP and ROC-AUC, with its precision–recall and ROC curves; training curves (loss and
validation mAP); and a Grad-CAM gallery where each overlay explains one label the image
carries, so a reviewer sees whether each finding is found where it is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.evaluate import plots
from visiondeck.evaluate.metrics import precision_recall_curve, roc_curve
from visiondeck.evaluate.report import Figure, Thumb, read_history, render_template

__all__ = ["write_multilabel_report"]


def _history_figure(rows: list[dict[str, str]]) -> bytes | None:
    """Loss and validation mAP / F1 per epoch."""
    if not rows:
        return None
    fig, (loss_ax, map_ax) = plots._figure(9, 3.2, 2)
    epochs = [float(r.get("epoch") or i + 1) for i, r in enumerate(rows)]
    for ax, keys, title in ((loss_ax, ("train_loss_epoch", "val_loss"), "loss"),
                            (map_ax, ("val_map", "val_map_micro", "val_f1"), "validation")):
        for key in keys:
            values = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
            if not np.isnan(values).all():
                ax.plot(epochs, values, marker="o", ms=3, label=key.replace("_epoch", ""))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        plots._legend(ax, fontsize=8)
    return plots._png(fig)


def _curves(labels: np.ndarray, probs: np.ndarray, metrics: dict[str, Any]
            ) -> list[Figure]:
    roc, pr = [], []
    for j, name in enumerate(metrics["classes"]):
        positives = labels[:, j].astype(bool)
        if positives.any() and not positives.all():
            per = metrics["per_label"][name]
            fpr, tpr, _ = roc_curve(positives, probs[:, j])
            precision, recall, _ = precision_recall_curve(positives, probs[:, j])
            roc.append((name, fpr, tpr, per["roc_auc"]))
            pr.append((name, np.r_[0.0, recall], np.r_[1.0, precision],
                       per["average_precision"]))
    if not roc:
        return []
    return [Figure("pr", "Precision–recall curves per label (AP)",
                   plots.curves_figure(pr, kind="pr")),
            Figure("roc", "ROC curves per label (AUC)", plots.curves_figure(roc, kind="roc"))]


def _gradcam(trained: Any, scored: Any, probs: np.ndarray, classes: list[str],
             thresholds: list[float], samples: int, method: str, seed: int
             ) -> tuple[list[Thumb], str | None]:
    """Up to `samples` images carrying labels, one overlay per label they carry (≤ 2)."""
    if samples <= 0 or scored.images is None or not len(probs):
        return [], None
    from visiondeck.errors import VisionDeckError
    from visiondeck.explain import explain_batch
    from visiondeck.explain.overlays import png_bytes

    rng = np.random.default_rng(seed)
    carrying = np.flatnonzero(scored.labels.any(axis=1))
    pairs = [(int(i), int(j)) for i in rng.permutation(carrying)[:samples]
             for j in np.flatnonzero(scored.labels[i])[:2]]
    if not pairs:
        return [], None
    pictures = [np.ascontiguousarray(scored.images[i].transpose(1, 2, 0)) for i, _ in pairs]
    try:
        explained = explain_batch(trained.model, pictures, trained.spec, method=method,
                                  class_indices=[j for _, j in pairs])
    except VisionDeckError as exc:
        return [], f"Grad-CAM unavailable: {exc.message}"
    thumbs = []
    for (i, j), explanation in zip(pairs, explained, strict=True):
        pair = np.concatenate([np.repeat(explanation.image, 3 // explanation.image.shape[2], 2),
                               explanation.overlay], axis=1)
        found = probs[i, j] >= thresholds[j]
        thumbs.append(Thumb(png_bytes(pair, scale=max(1, 96 // pair.shape[0])),
                            f"{'✓' if found else '✗'} {classes[j]} ({probs[i, j]:.0%})",
                            "right" if found else "wrong"))
    return thumbs, f"{method} on layer {explained[0].target_layer_name}"


def write_multilabel_report(metrics: dict[str, Any], out_dir: Path, *, trained: Any,
                            scored: Any, probs: np.ndarray, run_dir: Path,
                            gradcam_samples: int = 6, gradcam_method: str = "gradcam",
                            seed: int = 0) -> Path:
    """Write plots/*.png and report.html into `out_dir`; returns the report's path."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    classes = list(metrics["classes"])
    figures = _curves(np.asarray(scored.labels), probs, metrics)
    history = _history_figure(read_history(run_dir))
    if history is not None:
        figures.insert(0, Figure("history", "Training curves", history))
    for figure in figures:
        (out / "plots" / f"{figure.name}.png").write_bytes(figure.png)
    chosen = metrics["thresholds"]["values"]
    gradcam, note = _gradcam(trained, scored, probs, classes,
                             [float(chosen.get(name, 0.5)) for name in classes],
                             gradcam_samples, gradcam_method, seed)
    title = f"{Path(run_dir).name} — {trained.architecture} — {metrics['split']} split"
    html = render_template(
        "multilabel_report.html.j2", title=title, metrics=metrics, classes=classes,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        figures={f.name: f for f in figures}, gradcam=gradcam, gradcam_note=note)
    report = out / "report.html"
    report.write_text(html, encoding="utf-8")
    return report
