"""The report's figures as PNG bytes (matplotlib's object API: no pyplot, no global state).

Each function draws one figure and returns its PNG, ready to embed as base64 in the
self-contained report or to write beside it. Nothing here touches a display or a global
backend, so reports render the same in a notebook, a server or a CI job.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "bar_chart",
    "confusion_figure",
    "curves_figure",
    "history_figure",
    "reliability_figure",
    "score_histogram",
    "summary_figure",
]

_BLUE, _ORANGE, _GREY = "#1f77b4", "#ff7f0e", "#888888"


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend only when something is labelled (matplotlib warns on an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def history_figure(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Loss and accuracy per epoch from history.csv rows (None when there is no history)."""
    if not rows:
        return None
    fig, (loss_ax, acc_ax) = _figure(9, 3.2, 2)
    epochs = [float(r.get("epoch") or i + 1) for i, r in enumerate(rows)]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]

    for ax, keys, title in ((loss_ax, ("train_loss_epoch", "val_loss"), "loss"),
                            (acc_ax, ("train_acc", "val_acc"), "accuracy")):
        for key, colour in zip(keys, (_BLUE, _ORANGE), strict=True):
            if any(key in r for r in rows):
                ax.plot(epochs, series(key), marker="o", ms=3, color=colour,
                        label=key.replace("_epoch", ""))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    return _png(fig)


def confusion_figure(cm: np.ndarray, classes: Sequence[str], *, normalized: bool = True
                     ) -> bytes:
    cm = np.asarray(cm, dtype=np.float64)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalized else cm
    side = min(3 + 0.45 * len(classes), 12)
    fig, (ax,) = _figure(side + 1, side)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalized else ""))
    if len(classes) <= 20:
        limit = shown.max() / 2 if shown.size else 0
        for i in range(len(classes)):
            for j in range(len(classes)):
                text = f"{shown[i, j]:.2f}" if normalized else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > limit else "black")
    return _png(fig)


def curves_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float | None]], *,
                  kind: str) -> bytes:
    """ROC (kind="roc": x = FPR, y = TPR) or PR (kind="pr": x = recall, y = precision)."""
    fig, (ax,) = _figure(5.2, 4.4)
    for name, x, y, area in curves:
        label = f"{name} ({area:.3f})" if area is not None else name
        ax.plot(x, y, lw=1.4, label=label, drawstyle="steps-post" if kind == "pr" else None)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color=_GREY, lw=1)
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.set_title("ROC, one class vs rest (AUC)")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("precision–recall, one class vs rest (AP)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7, loc="lower right" if kind == "roc" else "lower left")
    return _png(fig)


def reliability_figure(panels: Sequence[tuple[str, Any]]) -> bytes:
    """Reliability diagrams side by side, e.g. [("before", rel), ("after T=1.7", rel)]."""
    fig, axes = _figure(4.2 * len(panels), 4.0, len(panels))
    for ax, (title, rel) in zip(axes, panels, strict=True):
        centres = (rel.edges[:-1] + rel.edges[1:]) / 2
        width = rel.edges[1] - rel.edges[0]
        filled = rel.counts > 0
        ax.bar(centres[filled], rel.accuracy[filled], width=width * 0.9, color=_BLUE,
               alpha=0.8, label="accuracy")
        ax.plot(centres[filled], rel.confidence[filled], "o", color=_ORANGE, ms=4,
                label="mean confidence")  # above the bar: over-confident, below: under
        ax.plot([0, 1], [0, 1], ls="--", color=_GREY, lw=1)
        ax.set_title(f"{title}  ECE {rel.ece:.3f}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        _legend(ax, fontsize=8, loc="upper left")
    return _png(fig)


def score_histogram(groups: Mapping[str, np.ndarray], threshold: float, *, label: str
                    ) -> bytes:
    """Distribution of the rejection score per image set, with the threshold."""
    fig, (ax,) = _figure(6, 3.4)
    values = [v for v in groups.values() if len(v)]
    if values:
        low = min(float(np.min(v)) for v in values)
        high = max(float(np.max(v)) for v in values)
        bins = np.linspace(low, high if high > low else low + 1, 40)
        for name, scores in groups.items():
            if len(scores):
                ax.hist(scores, bins=bins, alpha=0.5, density=True,
                        label=f"{name} (n={len(scores)})")
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
    ax.set_xlabel(label)
    ax.set_ylabel("density")
    ax.set_title("unknown-input rejection")
    _legend(ax, fontsize=8)
    return _png(fig)


def bar_chart(labels: Sequence[str], series: Mapping[str, Sequence[float | None]], *,
              errors: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
              title: str = "", ylabel: str = "") -> bytes:
    """Grouped bars (one group per label, one bar per series) with optional CI whiskers."""
    fig, (ax,) = _figure(max(5.0, 1.1 * len(labels) * max(1, len(series)) ** 0.5 + 2), 3.8)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series.items()):
        heights = np.array([np.nan if v is None else v for v in values], dtype=float)
        yerr = None
        if errors and errors.get(name):
            lows, highs = [], []
            for h, ci in zip(heights, errors[name], strict=True):
                lows.append(0 if ci is None or np.isnan(h) else max(0.0, h - ci[0]))
                highs.append(0 if ci is None or np.isnan(h) else max(0.0, ci[1] - h))
            yerr = np.array([lows, highs])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, yerr=yerr,
               capsize=3, label=name)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        _legend(ax, fontsize=8)
    return _png(fig)


def summary_figure(title: str, headline: Mapping[str, float], cm: np.ndarray,
                   classes: Sequence[str], roc: Sequence[tuple[str, np.ndarray, np.ndarray,
                                                              float | None]],
                   reliability: Any) -> bytes:
    """One slide: headline numbers, confusion matrix, ROC curves, reliability after scaling."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.9), dpi=120, layout="constrained")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    text_ax, cm_ax, roc_ax, rel_ax = fig.subplots(1, 4, width_ratios=[0.7, 1, 1, 1])
    text_ax.axis("off")
    lines = [f"{key.replace('_', ' ')}: {value:.3f}" for key, value in list(headline.items())[:10]]
    text_ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    cm_ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 12:
        cm_ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        cm_ax.set_yticks(range(len(classes)), classes, fontsize=7)
    cm_ax.set_title("confusion (row-normalised)", fontsize=9)
    for name, fpr, tpr, _ in roc[:12]:
        roc_ax.plot(fpr, tpr, lw=1, label=name)
    roc_ax.plot([0, 1], [0, 1], ls="--", color=_GREY, lw=1)
    if roc:
        _legend(roc_ax, fontsize=6, loc="lower right")
    roc_ax.set_title("ROC one-vs-rest", fontsize=9)
    roc_ax.set_xlabel("FPR", fontsize=8)
    roc_ax.set_ylabel("TPR", fontsize=8)
    centres = (reliability.edges[:-1] + reliability.edges[1:]) / 2
    filled = reliability.counts > 0
    rel_ax.bar(centres[filled], reliability.accuracy[filled],
               width=(reliability.edges[1] - reliability.edges[0]) * 0.9, color=_BLUE)
    rel_ax.plot([0, 1], [0, 1], ls="--", color=_GREY, lw=1)
    rel_ax.set_xlim(0, 1)
    rel_ax.set_ylim(0, 1)
    rel_ax.set_title(f"reliability (calibrated) ECE {reliability.ece:.3f}", fontsize=9)
    return _png(fig)
