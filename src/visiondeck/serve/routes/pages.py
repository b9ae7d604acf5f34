"""The web page: Predict, History, Compare, Model card and Monitor, served with the API
(Review: serve/routes/review.py).

Pages are server-rendered Jinja2 templates (serve/templates/) that load plain ES modules
and CSS from serve/static/ - no build step, nothing fetched from the internet - and call
the JSON API from the browser. What a page needs from the server at render time (classes,
upload limits, which features are on) goes into one `<script type="application/json">`
block, so no script is inlined and every page carries a strict Content-Security-Policy.

The pages are public even with `require_api_key`: they render the served model's
description only (classes, card), never traffic. Predictions, history, thumbnails,
monitoring and labels reach them through the API with the key typed into the page
(static/js/api.js sends it as X-API-Key).

The model card is rendered here in full from the served Bundle: bundle.json and, when
`visiondeck bench` wrote one, the Bundle's bench.json (a fixed name inside the Bundle,
never a path from a request).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

from visiondeck import __version__
from visiondeck.export.bundle import Bundle
from visiondeck.serve.services import STATIC_DIR, Services

__all__ = ["CSP", "PAGES", "model_card", "router"]

router = APIRouter(tags=["pages"], include_in_schema=False)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache"}
_BENCH_FILE = "bench.json"
_MAX_BENCH_BYTES = 1 << 20

_METRIC_LABELS = {
    "accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1",
    "weighted_f1": "Weighted F1", "macro_precision": "Macro precision",
    "macro_recall": "Macro recall", "mcc": "MCC", "roc_auc_macro": "ROC AUC (macro)",
    "pr_auc_macro": "PR AUC (macro)", "ece": "ECE (calibration error)",
    "top3_accuracy": "Top-3 accuracy", "top5_accuracy": "Top-5 accuracy",
    "sensitivity": "Sensitivity", "specificity": "Specificity",
    "positive_roc_auc": "ROC AUC (positive class)",
}

PAGES = (("predict", "/", "Predict"), ("history", "/history", "History"),
         ("compare", "/compare", "Compare"), ("model", "/model-card", "Model"),
         ("monitor", "/monitor", "Monitor"), ("review", "/review", "Review"))


def _render(request: Request, template: str, page: str, **extra: Any) -> HTMLResponse:
    services: Services = request.app.state.services
    settings = services.settings
    model = services.engine._model
    model_ref = None if model is None else {"name": model.name, "version": model.version,
                                            "variant": model.variant}
    data = {
        "page": page,
        "model": model_ref,
        "classes": [] if model is None else list(model.bundle.classes),
        # "multilabel": a set of labels per image (chips, check boxes, per-label rates)
        "task": "single" if model is None else model.bundle.task,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_batch_files": settings.max_batch_files,
        "store": settings.store,
        "explain": settings.explain,
        "require_api_key": settings.require_api_key,
    }
    context = {"page": page, "pages": PAGES, "model": model_ref, "data": data,
               "upload_limit": _human_bytes(settings.max_upload_bytes),
               "load_error": services.engine.load_error, "docs": settings.docs,
               "version": __version__, **extra}
    return request.app.state.templates.TemplateResponse(request, template, context,
                                                        headers=_HEADERS)


@router.get("/", response_class=HTMLResponse)
async def predict_page(request: Request) -> HTMLResponse:
    """Upload one or many images (pick, drop or paste) and see ranked classes and Grad-CAM."""
    return _render(request, "predict.html", "predict")


@router.get("/history", response_class=HTMLResponse)
async def history_page(request: Request) -> HTMLResponse:
    """Stored predictions: filters, paging, thumbnails, export to CSV, JSON and PDF."""
    return _render(request, "history.html", "history")


@router.get("/compare", response_class=HTMLResponse)
async def compare_page(request: Request) -> HTMLResponse:
    """Images side by side, and one image under every model version that predicted it."""
    return _render(request, "compare.html", "compare")


@router.get("/model-card", response_class=HTMLResponse)
async def model_card_page(request: Request) -> HTMLResponse:
    """The served model's card, read from its Bundle."""
    services: Services = request.app.state.services
    model = services.engine._model
    card = None if model is None else await asyncio.to_thread(model_card, model.bundle)
    return _render(request, "model_card.html", "model", card=card)


@router.get("/monitor", response_class=HTMLResponse)
async def monitor_page(request: Request) -> HTMLResponse:
    """Prediction volume, class mix, confidence over time and drift (from /monitor/summary)."""
    return _render(request, "monitor.html", "monitor")


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    """Browsers ask for it on every origin, JSON pages included."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


# ------------------------------------------------------------------------ the model card


def model_card(bundle: Bundle) -> dict[str, Any]:
    """What the card shows, checked and shaped for the template (never raises on odd JSON)."""
    info, classes = bundle.info, list(bundle.classes)
    notes: list[str] = []
    calibration = bundle.calibration
    reject = calibration.reject
    decision = calibration.decision_threshold
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    counts = data.get("train_counts") if isinstance(data.get("train_counts"), dict) else {}
    train = [(c, _int(counts.get(c))) for c in classes]
    top = max([n for _, n in train if n is not None] or [0])
    metrics = [(_METRIC_LABELS.get(k, k.replace("_", " ")), v)
               for k, v in (info.get("metrics") or {}).items()
               if isinstance(v, int | float | str) and not isinstance(v, bool)]
    return {
        "task": bundle.task,
        "labels": _label_thresholds(bundle) if bundle.multilabel else [],
        "architecture": bundle.architecture,
        "created_at": info.get("created_at"),
        "input": bundle.input,
        "temperature": calibration.temperature,
        "reject": None if reject is None else (
            f"the top probability is below {reject.threshold:.4g}" if reject.method == "max_prob"
            else f"the energy score is above {reject.threshold:.4g}"),
        "decision": None if decision is None else (
            f"{decision.positive_class} when its probability ≥ {decision.threshold:.4g}"),
        "classes": [{"name": c, "train": n, "share": (n / top) if n and top else 0.0}
                    for c, n in train],
        "train_total": sum(n for _, n in train if n is not None),
        "fingerprint": data.get("fingerprint"),
        "metrics": metrics,
        "confusion": _confusion(info, classes, notes),
        "variants": _variants(info.get("variants")),
        "parity": info.get("parity") if isinstance(info.get("parity"), dict) else {},
        "bench": _bench(bundle.path, notes),
        "sweep": _sweep(info.get("sweep")),
        "versions": info.get("versions") if isinstance(info.get("versions"), dict) else {},
        "export_notes": [str(n) for n in (info.get("export") or {}).get("notes", [])
                         if isinstance(n, str)],
        "notes": notes,
    }


def _label_thresholds(bundle: Bundle) -> list[dict[str, Any]]:
    """Each label's threshold (and its own temperature, when one was fitted) in class
    order: the ones /predict applies, read through the same `Calibration` calls."""
    calibration = bundle.calibration
    classes = list(bundle.classes)
    temperatures = calibration.label_temperatures or {}
    return [{"name": c, "threshold": float(t), "temperature": temperatures.get(c)}
            for c, t in zip(classes, calibration.thresholds(classes), strict=True)]


def _human_bytes(n: int) -> str:
    """Sizes as the page's JavaScript writes them (1 MB = 1,048,576 bytes)."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    return f"{n / 1024:.0f} kB" if n >= 1024 else f"{n} B"


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _confusion(info: dict[str, Any], classes: list[str], notes: list[str]
               ) -> dict[str, Any] | None:
    """Counts K×K (true rows, predicted columns) from bundle.json `evaluation`, as cells."""
    evaluation = info.get("evaluation") if isinstance(info.get("evaluation"), dict) else {}
    raw = evaluation.get("confusion_matrix")
    if isinstance(raw, dict):
        raw = raw.get("counts")
    if raw is None:
        notes.append("this Bundle carries no confusion matrix (bundle.json has no "
                     "evaluation.confusion_matrix); `visiondeck evaluate` shows it in the "
                     "run's report")
        return None
    k = len(classes)
    if not (isinstance(raw, list) and len(raw) == k
            and all(isinstance(r, list) and len(r) == k for r in raw)
            and all(_number(v) is not None and v >= 0 for r in raw for v in r)):
        notes.append(f"ignored bundle.json's confusion matrix: it is not {k}×{k} counts")
        return None
    cells = []
    for i, row in enumerate(raw):
        total = sum(row) or 1
        for j, value in enumerate(row):
            cells.append({"row": i, "col": j, "count": int(value),
                          "share": round(float(value) / total, 4)})
    correct = sum(raw[i][i] for i in range(k))
    total = sum(sum(r) for r in raw)
    longest = max(len(_short(c)) for c in classes)
    cell, left, top = 40, 14 + 7 * longest, 14 + 6 * longest  # top: labels turned 60°
    return {"cells": cells, "size": k, "total": int(total),
            "accuracy": (correct / total) if total else None,
            "split": str(evaluation.get("split") or "test"),
            "labels": [_short(c) for c in classes], "cell": cell, "left": left, "top": top,
            "width": left + cell * k + 4, "height": top + cell * k + 4}


def _short(name: str) -> str:
    return name if len(name) <= 16 else name[:15] + "…"


def _variants(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, dict):
        return []
    rows = []
    for name, v in sorted(raw.items()):
        if isinstance(v, dict):
            rows.append({"name": str(name), "file": str(v.get("file", "")),
                         "bytes": _int(v.get("bytes")), "accuracy": _number(v.get("accuracy")),
                         "method": v.get("method") if isinstance(v.get("method"), str) else None})
    return rows


def _sweep(raw: Any) -> list[dict[str, Any]]:
    """bundle.json's "sweep" rows (`visiondeck export --sweep`), numbers checked."""
    rows = raw.get("rows") if isinstance(raw, dict) else None
    if not isinstance(rows, list):
        return []
    return [{"variant": str(r.get("variant", "")), "engine": str(r.get("engine", "")),
             "bytes": _int(r.get("bytes")), "accuracy": _number(r.get("accuracy")),
             "agreement": _number(r.get("agreement")), "p50_ms": _number(r.get("p50_ms")),
             "p99_ms": _number(r.get("p99_ms")), "images_per_s": _number(r.get("images_per_s")),
             "pareto": r.get("pareto") is True, "default": r.get("default") is True,
             "recommended": r.get("recommended") is not False, "detail": str(r.get("detail", ""))}
            for r in rows[:64] if isinstance(r, dict)]


def _bench(path: Any, notes: list[str]) -> dict[str, Any] | None:
    """bench.json of the Bundle (written by `visiondeck bench`), if it is there and sane."""
    try:
        file = path / _BENCH_FILE
        if not file.is_file():
            notes.append("no speed figures yet: `visiondeck bench BUNDLE` measures them and "
                         "saves bench.json in the Bundle")
            return None
        if file.stat().st_size > _MAX_BENCH_BYTES:
            raise ValueError("larger than 1 MiB")
        raw = json.loads(file.read_text())
        rows = [{"engine": str(r["engine"]), "p50_ms": _number(r.get("p50_ms")),
                 "p95_ms": _number(r.get("p95_ms")), "p99_ms": _number(r.get("p99_ms")),
                 "images_per_s": _number(r.get("images_per_s")),
                 "best_batch": _int(r.get("best_batch")), "accuracy": _number(r.get("accuracy"))}
                for r in raw["rows"]]
        machine = raw.get("machine") if isinstance(raw.get("machine"), dict) else {}
        return {"rows": rows, "threads": _int(raw.get("threads")),
                "created_at": str(raw.get("created_at", "")),
                "machine": {str(k): str(v) for k, v in machine.items()
                            if isinstance(v, str | int | float)}}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        notes.append(f"ignored the Bundle's bench.json ({type(exc).__name__}: {exc})")
        return None
