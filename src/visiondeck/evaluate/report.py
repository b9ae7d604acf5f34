"""The evaluation report: one self-contained HTML file (figures inlined) and a summary PNG.

Everything a reviewer opens is in `report.html`: no external script, style sheet or image,
so it can be mailed, attached to a ticket or opened years later offline. Figures are also
written as PNG files under `plots/` for slides.
"""

from __future__ import annotations

import base64
import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.evaluate import plots
from visiondeck.evaluate.metrics import precision_recall_curve, roc_curve

__all__ = ["Figure", "Thumb", "read_history", "render_template", "write_report"]


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Thumb:
    """A small picture with a caption (galleries)."""

    png: bytes
    caption: str
    css: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def render_template(name: str, **context: Any) -> str:
    """Render a template shipped in `visiondeck/evaluate/templates/` (autoescaped)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("visiondeck.evaluate", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f} %"
    env.filters["num"] = lambda v, d=3: "–" if v is None else f"{float(v):.{d}f}"
    return env.get_template(name).render(**context)


def read_history(run_dir: Path) -> list[dict[str, str]]:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _thumb(image_chw: np.ndarray, caption: str, css: str = "") -> Thumb:
    from visiondeck.explain.overlays import png_bytes

    hwc = np.ascontiguousarray(np.asarray(image_chw).transpose(1, 2, 0))
    return Thumb(png_bytes(hwc, scale=max(1, 96 // hwc.shape[0])), caption, css)


def _mistakes(scored: Any, probs: np.ndarray, pred: np.ndarray, classes: list[str],
              limit: int = 16) -> list[Thumb]:
    """The most confident wrong predictions first: the errors most worth a look."""
    if scored.images is None:
        return []
    wrong = np.flatnonzero(pred != scored.labels)
    order = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:limit]
    return [_thumb(scored.images[i], f"{classes[scored.labels[i]]} → {classes[pred[i]]} "
                   f"({probs[i, pred[i]]:.0%})\n{Path(scored.relpaths[i]).name}", "wrong")
            for i in order]


def _pair_examples(scored: Any, pred: np.ndarray, pairs: list[dict[str, Any]],
                   classes: list[str], per_pair: int = 4) -> list[dict[str, Any]]:
    out = []
    for pair in pairs[:6]:
        t, p = classes.index(pair["true"]), classes.index(pair["predicted"])
        idx = np.flatnonzero((scored.labels == t) & (pred == p))[:per_pair]
        thumbs = ([_thumb(scored.images[i], Path(scored.relpaths[i]).name) for i in idx]
                  if scored.images is not None else [])
        out.append({**pair, "examples": thumbs})
    return out


def _gradcam(trained: Any, scored: Any, probs: np.ndarray, pred: np.ndarray,
             classes: list[str], samples: int, method: str, seed: int
             ) -> tuple[list[Thumb], str | None]:
    """Overlays for a sample of right and wrong predictions (explaining the predicted class)."""
    if samples <= 0 or scored.images is None or not len(pred):
        return [], None
    from visiondeck.errors import VisionDeckError
    from visiondeck.explain import explain_batch
    from visiondeck.explain.overlays import png_bytes

    rng = np.random.default_rng(seed)
    right, wrong = np.flatnonzero(pred == scored.labels), np.flatnonzero(pred != scored.labels)
    chosen = [*rng.permutation(right)[:samples], *rng.permutation(wrong)[:samples]]
    pictures = [np.ascontiguousarray(scored.images[i].transpose(1, 2, 0)) for i in chosen]
    try:
        explained = explain_batch(trained.model, pictures, trained.spec, method=method,
                                  class_indices=[int(pred[i]) for i in chosen])
    except VisionDeckError as exc:
        return [], f"Grad-CAM unavailable: {exc.message}"
    thumbs = []
    for i, explanation in zip(chosen, explained, strict=True):
        pair = np.concatenate([np.repeat(explanation.image, 3 // explanation.image.shape[2], 2),
                               explanation.overlay], axis=1)
        ok = pred[i] == scored.labels[i]
        caption = (f"{'✓' if ok else '✗'} {classes[scored.labels[i]]} → {classes[pred[i]]} "
                   f"({probs[i, pred[i]]:.0%})")
        thumbs.append(Thumb(png_bytes(pair, scale=max(1, 96 // pair.shape[0])), caption,
                            "right" if ok else "wrong"))
    return thumbs, f"{method} on layer {explained[0].target_layer_name}" if explained else None


def _montage(thumbs: list[Thumb], columns: int = 6) -> bytes:
    """The Grad-CAM gallery as one PNG for slides (green frame: right, red: wrong)."""
    import io

    from PIL import Image, ImageOps

    tiles = [ImageOps.expand(Image.open(io.BytesIO(t.png), formats=("PNG",)).convert("RGB"), 3,
                             fill=(60, 157, 93) if t.css == "right" else (217, 83, 79))
             for t in thumbs]
    width, height = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (width + 6), rows * (height + 6)), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (width + 6), (i // columns) * (height + 6)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _figures(result: Any, history: list[dict[str, str]], scored: Any, probs: np.ndarray,
             reliabilities: tuple[Any, Any], reject_scores: dict[str, np.ndarray]
             ) -> tuple[list[Figure], list[tuple[str, np.ndarray, np.ndarray, float | None]]]:
    metrics, classes = result.metrics, result.metrics["classes"]
    cm = np.asarray(metrics["confusion_matrix"]["counts"])
    figures: list[Figure] = []
    curves = plots.history_figure(history)
    if curves:
        figures.append(Figure("history", "Training curves", curves))
    figures.append(Figure("confusion", "Confusion matrix (counts)",
                          plots.confusion_figure(cm, classes, normalized=False)))
    figures.append(Figure("confusion_normalized", "Confusion matrix (row-normalised)",
                          plots.confusion_figure(cm, classes, normalized=True)))
    roc, pr = [], []
    for k, name in enumerate(classes):
        positives = scored.labels == k
        if positives.any() and not positives.all():
            fpr, tpr, _ = roc_curve(positives, probs[:, k])
            precision, recall, _ = precision_recall_curve(positives, probs[:, k])
            per = metrics["per_class"][name]
            roc.append((name, fpr, tpr, per["roc_auc"]))
            pr.append((name, np.r_[0.0, recall], np.r_[1.0, precision], per["pr_auc"]))
    if roc:
        figures.append(Figure("roc", "ROC curves", plots.curves_figure(roc, kind="roc")))
        figures.append(Figure("pr", "Precision–recall curves", plots.curves_figure(pr, kind="pr")))
    before, after = reliabilities
    temperature = metrics["calibration"]["temperature"]
    figures.append(Figure("reliability", "Reliability before and after temperature scaling",
                          plots.reliability_figure([("before", before),
                                                    (f"after (T={temperature:.2f})", after)])))
    reject = metrics["reject"]
    label = "top probability" if reject["method"] == "max_prob" else "energy"
    figures.append(Figure("reject", "Unknown-input rejection scores",
                          plots.score_histogram(reject_scores, reject["threshold"], label=label)))
    return figures, roc


def write_report(result: Any, *, trained: Any, scored: Any, probs: np.ndarray,
                 pred: np.ndarray, reliabilities: tuple[Any, Any],
                 reject_scores: dict[str, np.ndarray], gradcam_samples: int,
                 gradcam_method: str, seed: int) -> tuple[Path, Path]:
    """Write plots/*.png, summary.png and report.html into `result.out_dir`."""
    try:
        import jinja2  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as exc:
        from visiondeck.evaluate.predict import EvaluationError

        raise EvaluationError(f"the report needs matplotlib and Jinja2 ({exc})",
                              hint="pip install 'visiondeck[report]', or pass report=False "
                                   "(metrics.json and calibration.json are already written)"
                              ) from None
    out = Path(result.out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    metrics, classes = result.metrics, result.metrics["classes"]
    history = read_history(result.run_dir)
    figures, roc = _figures(result, history, scored, probs, reliabilities, reject_scores)
    for figure in figures:
        (out / "plots" / f"{figure.name}.png").write_bytes(figure.png)
    title = f"{Path(result.run_dir).name} — {trained.architecture} — {metrics['split']} split"
    summary = plots.summary_figure(title, metrics["headline"],
                                   np.asarray(metrics["confusion_matrix"]["counts"]), classes,
                                   roc, reliabilities[1])
    (out / "summary.png").write_bytes(summary)
    gradcam, gradcam_note = _gradcam(trained, scored, probs, pred, classes, gradcam_samples,
                                     gradcam_method, seed)
    if gradcam:
        (out / "plots" / "gradcam.png").write_bytes(_montage(gradcam))
    html = render_template(
        "report.html.j2", title=title, metrics=metrics, classes=classes,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        architecture=trained.architecture, run_info=_run_info(result.run_dir),
        figures={f.name: f for f in figures}, summary=Figure("summary", "Summary", summary),
        mistakes=_mistakes(scored, probs, pred, classes),
        pairs=_pair_examples(scored, pred, metrics["most_confused"], classes),
        gradcam=gradcam, gradcam_note=gradcam_note, history_rows=len(history),
    )
    report = out / "report.html"
    report.write_text(html, encoding="utf-8")
    return report, out / "summary.png"


def _run_info(run_dir: Path) -> dict[str, Any]:
    import json

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    info = json.loads(path.read_text())
    return {"status": info.get("status"), "epochs": info.get("epochs_run"),
            "duration_s": info.get("duration_s"), "versions": info.get("versions", {}),
            "git_commit": info.get("git_commit")}
