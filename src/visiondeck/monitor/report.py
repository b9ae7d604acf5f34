"""The HTML drift report of `visiondeck monitor report`: one file, opens offline.

Everything is inline (SVG charts, CSS), nothing is fetched. It shows the verdict, every
drift test with its threshold, reference-vs-live histograms of each feature, the class mix,
traffic and confidence over time, and live accuracy from labelled predictions. Rendering
needs Jinja2 (the serve and report extras); the numbers come from `assess`.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from visiondeck.monitor.assess import DriftAssessment
from visiondeck.monitor.reference import ReferenceStats
from visiondeck.monitor.stats import FeatureSummary, finite
from visiondeck.monitor.window import WindowData

__all__ = ["ReportContext", "render_report"]

_REF, _LIVE = "#8aa4c8", "#d9822b"
_FEATURES = ("brightness", "contrast", "size", "aspect", "confidence")


@dataclass
class ReportContext:
    """What the report says about where its rows came from."""

    model: str
    bundle: str
    store: str
    since: datetime | None
    until: datetime | None
    versions: Sequence[str]
    rows: int
    notes: list[str] = field(default_factory=list)


def render_report(reference: ReferenceStats, window: WindowData, result: DriftAssessment,
                  context: ReportContext) -> str:
    """The report as one HTML string."""
    from jinja2 import Environment, select_autoescape
    from markupsafe import Markup

    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    charts = []
    for name in _FEATURES:
        summary = reference.features.get(name)
        values = finite(window.features.get(name, np.empty(0)))
        if summary is not None and values.size:
            charts.append({"title": name, "svg": Markup(_histogram(summary, values))})
    k = len(reference.classes)
    live = np.bincount(window.predicted[(window.predicted >= 0) & (window.predicted < k)],
                       minlength=k)
    class_svg = Markup(_bars(list(reference.classes), [
        ("reference", _shares(np.asarray(reference.class_counts))),
        ("live", _shares(live))]))
    timeline = _timeline(window)
    return env.from_string(_TEMPLATE).render(
        ctx=context, result=result, reference=reference, charts=charts, class_svg=class_svg,
        volume_svg=Markup(timeline[0]) if timeline else None,
        confidence_svg=Markup(timeline[1]) if timeline else None,
        per_class=_per_class_accuracy(reference, window),
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        fmt=_fmt, ref_color=_REF, live_color=_LIVE)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * len(counts)


def _bin_labels(summary: FeatureSummary) -> list[str]:
    """Bin names with just enough digits to tell neighbouring edges apart."""
    for digits in range(3, 8):
        e = [f"{v:.{digits}g}" for v in summary.edges]
        if len(set(e)) == len(e):
            break
    inner = [f"{a}–{b}" for a, b in itertools.pairwise(e)]
    return [f"<{e[0]}", *inner, f"={e[-1]}", f">{e[-1]}"]


def _histogram(summary: FeatureSummary, values: np.ndarray) -> str:
    return _bars(_bin_labels(summary), [("reference", _shares(np.asarray(summary.counts))),
                                        ("live", _shares(summary.bin_counts(values)))])


def _bars(labels: list[str], series: list[tuple[str, list[float]]], width: int = 520,
          height: int = 210) -> str:
    """Grouped bars, one group per label, as an inline SVG."""
    n, groups = len(series), max(1, len(labels))
    top = max([max(values, default=0.0) for _, values in series] + [1e-9])
    plot_h, base = height - 75, height - 62
    slot = (width - 20) / groups
    bar = max(1.0, slot * 0.8 / n)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img">']
    for g, label in enumerate(labels):
        x0 = 10 + g * slot + slot * 0.1
        for s, (_, values) in enumerate(series):
            h = plot_h * values[g] / top
            parts.append(f'<rect x="{x0 + s * bar:.1f}" y="{base - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{(_REF, _LIVE)[s % 2]}">'
                         f'<title>{html.escape(series[s][0])} {html.escape(label)}: '
                         f'{values[g]:.1%}</title></rect>')
        if groups <= 16:
            x, y = x0 + slot * 0.4, base + 10
            parts.append(f'<text x="{x:.1f}" y="{y}" font-size="9" text-anchor="end" '
                         f'transform="rotate(-35 {x:.1f} {y})">{html.escape(label[:18])}</text>')
    parts.append(f'<line x1="10" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#999"/>')
    parts.append("</svg>")
    return "".join(parts)


def _timeline(window: WindowData) -> tuple[str, str] | None:
    """Predictions per bucket and their mean confidence (hourly, or daily past 3 days)."""
    times = window.times[np.isfinite(window.times)]
    if times.size == 0:
        return None
    span = float(times.max() - times.min())
    step = 86400.0 if span > 3 * 86400 else 3600.0 if span > 3 * 3600 else 60.0
    buckets = np.floor(window.times / step)
    keys = np.unique(buckets[np.isfinite(buckets)])
    if keys.size < 2:  # one bucket: nothing to draw over time
        return None
    counts = [int((buckets == b).sum()) for b in keys]
    confidence = window.features["confidence"]
    means = [float(np.nanmean(confidence[buckets == b])) for b in keys]
    labels = [datetime.fromtimestamp(b * step, UTC).strftime(
        "%m-%d" if step == 86400 else "%d %H:%M") for b in keys]
    return _line(labels, counts, "predictions"), _line(labels, means, "mean confidence")


def _line(labels: list[str], values: Sequence[float], name: str, width: int = 520,
          height: int = 160) -> str:
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    n = len(values)
    xs = [20 + (width - 40) * (i / max(1, n - 1)) for i in range(n)]
    ys = [height - 30 - (height - 50) * (v - lo) / span for v in values]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    marks = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{_LIVE}"><title>'
                    f'{html.escape(label)}: {v:.4g} {name}</title></circle>'
                    for x, y, v, label in zip(xs, ys, values, labels, strict=True))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img"><polyline fill="none" stroke="{_LIVE}" stroke-width="1.5" '
            f'points="{points}"/>{marks}<text x="20" y="12" font-size="10">{hi:.4g}</text>'
            f'<text x="20" y="{height - 8}" font-size="10">{lo:.4g} · '
            f'{html.escape(labels[0])} → {html.escape(labels[-1])}</text></svg>')


def _per_class_accuracy(reference: ReferenceStats, window: WindowData
                        ) -> list[Mapping[str, Any]]:
    if window.labels is None:
        return []
    rows = []
    for i, name in enumerate(reference.classes):
        mask = window.labels == i
        if mask.any():
            rows.append({"cls": name, "labelled": int(mask.sum()),
                         "accuracy": float((window.predicted[mask] == i).mean())})
    return rows


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report · {{ ctx.model }}</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse} td,th{padding:3px 10px;border-bottom:1px solid #ddd;
text-align:right} th:first-child,td:first-child{text-align:left}
.verdict{padding:.7em 1em;border-radius:6px;font-weight:600;margin:1em 0}
.drift{background:#fbe3e0;color:#8a1c0f} .ok{background:#e3f4e1;color:#1e5c17}
.warming_up,.no_data{background:#eee;color:#555} .alarm{color:#b3261e;font-weight:600}
.grid{display:flex;flex-wrap:wrap;gap:1.5em} .grid figure{margin:0}
figcaption{font-weight:600} .legend span{display:inline-block;width:12px;height:12px;
margin:0 4px 0 12px;vertical-align:middle} .muted{color:#666}
</style></head><body>
<h1>Drift report · {{ ctx.model }}</h1>
<p class="muted">Bundle {{ ctx.bundle }} · store {{ ctx.store }} ·
{{ ctx.since.isoformat() if ctx.since else "beginning" }} →
{{ ctx.until.isoformat() if ctx.until else "now" }} · model versions
{{ ctx.versions|join(", ") if ctx.versions else "any" }} · generated {{ generated }}</p>
<div class="verdict {{ result.status }}">
{% if result.status == "drift" %}ALARM:
{{ result.alarms|map(attribute="feature")|unique|join(", ") }}
{% if result.accuracy_alarm %} · live accuracy below the minimum{% endif %}
{% elif result.status == "ok" %}No drift detected
{% elif result.status == "warming_up" %}Too few predictions to judge
({{ result.window_size }} &lt; {{ result.thresholds.min_window }})
{% else %}No predictions in this range{% endif %}
</div>
<p>{{ ctx.rows }} stored predictions compared with {{ reference.n }} reference images
({{ reference.source }}; reference accuracy {{ fmt(reference.accuracy) }}).</p>
{% for note in ctx.notes %}<p class="muted">Note: {{ note }}</p>{% endfor %}

<h2>Drift tests</h2>
<table><tr><th>feature</th><th>method</th><th>score</th><th>threshold</th><th>n</th>
<th>alarm</th></tr>
{% for row in result.features %}<tr><td>{{ row.feature }}</td><td>{{ row.method }}</td>
<td>{{ fmt(row.score) }}</td><td>{{ fmt(row.threshold) }}</td><td>{{ row.n }}</td>
<td class="{{ 'alarm' if row.alarm else '' }}">{{ "yes" if row.alarm else "no" }}</td></tr>
{% endfor %}</table>
<p class="muted">PSI: population stability index over the reference's decile bins (alarm
above max(0.25, its 99.9 % null quantile for these sample sizes)); ks: Kolmogorov-Smirnov
distance (alarm above the α = {{ result.thresholds.alpha }} critical value, at least
{{ result.thresholds.ks_floor }}); ks_max: the largest over dimensions, Bonferroni-corrected;
mean_drop: reference minus live mean confidence.</p>

<h2>Features: reference <span class="legend"><span style="background:{{ ref_color }}">
</span></span> vs live <span class="legend"><span style="background:{{ live_color }}">
</span></span></h2>
<div class="grid">{% for chart in charts %}<figure><figcaption>{{ chart.title }}
</figcaption>{{ chart.svg }}</figure>{% endfor %}
<figure><figcaption>class mix (predicted)</figcaption>{{ class_svg }}</figure></div>

{% if volume_svg %}<h2>Over time</h2><div class="grid">
<figure><figcaption>predictions</figcaption>{{ volume_svg }}</figure>
<figure><figcaption>mean confidence (reference {{ fmt(result.confidence_reference_mean) }})
</figcaption>{{ confidence_svg }}</figure></div>{% endif %}

<h2>Live accuracy</h2>
<p>{{ result.live_accuracy.labelled }} labelled predictions;
accuracy {{ fmt(result.live_accuracy.accuracy) }} (reference {{ fmt(reference.accuracy) }})
{%- if result.live_accuracy.unknown_labels %}; {{ result.live_accuracy.unknown_labels }}
labels name no class of the model{% endif %}.</p>
{% if per_class %}<table><tr><th>true class</th><th>labelled</th><th>accuracy</th></tr>
{% for row in per_class %}<tr><td>{{ row.cls }}</td><td>{{ row.labelled }}</td>
<td>{{ fmt(row.accuracy) }}</td></tr>{% endfor %}</table>{% endif %}
</body></html>
"""
