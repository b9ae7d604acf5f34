"""What a person reviews: suspects.csv (editable), report.html (thumbnails) and a grid PNG.

- `suspects.csv`: the flagged images, `path,given,suggested,score` plus `reasons`, most
  suspect first; the file `visiondeck data relabel` reads back after a person edited
  `suggested`.
- `possible.csv`: the same columns for cleanlab's other candidates (possible label issues,
  reason `possible_label`), kept apart so that relabelling an unedited suspects.csv never
  accepts a suggestion the audit was not confident of; rows worth keeping can be copied over.
- `report.html`: one self-contained page (thumbnails inlined), given vs suggested label, the
  score, why each image is listed and, for a near-duplicate, the other image beside it; the
  possible label issues follow the flagged ones under their own heading.
- `save_grid`: the top suspects as one picture (for a README or a slide).
"""

from __future__ import annotations

import base64
import csv
import io
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck._files import atomic_write_text, atomic_writer
from visiondeck.audit.findings import PIXEL_TOLERANCE, AuditFindings, Suspect
from visiondeck.audit.oof import OutOfFold

__all__ = ["CSV_COLUMNS", "save_grid", "thumbnail_png", "write_csv", "write_html"]

CSV_COLUMNS = ("path", "given", "suggested", "score", "reasons")


def write_csv(
    findings: AuditFindings, path: str | os.PathLike[str], *, possible: bool = False
) -> Path:
    """The flagged suspects (or, with `possible`, the possible label issues), most suspect
    first, in the columns `relabel` reads."""
    target = Path(path)
    with atomic_writer(target, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for s in findings.possible if possible else findings.suspects:
            writer.writerow([s.path, s.given, s.suggested, f"{s.score:.4f}", "+".join(s.reasons)])
    return target


def thumbnail_png(image: np.ndarray, size: int = 96) -> bytes:
    """uint8 (C, H, W) → PNG bytes, at most `size` px a side (small ones stay as they are,
    the page scales them up pixel by pixel)."""
    from PIL import Image

    array = np.ascontiguousarray(image.transpose(1, 2, 0))
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if max(picture.size) > size:
        picture.thumbnail((size, size))
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_html(
    findings: AuditFindings,
    oof: OutOfFold,
    path: str | os.PathLike[str],
    *,
    source: str,
    folds: int,
    csv_name: str = "suspects.csv",
    possible_csv_name: str = "possible.csv",
    show: int = 300,
    dup_threshold: float = 0.95,
    k: int = 10,
) -> Path:
    """The report page: at most `show` images (flagged first, then possible label issues),
    thumbnails inlined."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    index = {p: i for i, p in enumerate(oof.relpaths)}
    rows = [_row(s, oof, index) for s in findings.suspects[:show]]
    possible_rows = [_row(s, oof, index) for s in findings.possible[: max(0, show - len(rows))]]
    env = Environment(
        loader=PackageLoader("visiondeck.audit", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    page = env.get_template("report.html.j2").render(
        source=source,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        images=len(oof.relpaths),
        classes=oof.classes,
        folds=folds,
        accuracy=f"{findings.accuracy:.3f}",
        counts=findings.counts(),
        rows=rows,
        possible_rows=possible_rows,
        shown=len(rows),
        dup_threshold=dup_threshold,
        k=k,
        fence=f"{findings.outlier_fence:.3f}",
        csv_name=csv_name,
        possible_csv=possible_csv_name,
        thumb_px=84,
        pixel_pct=f"{100 * PIXEL_TOLERANCE:g}",
    )
    target = Path(path)
    atomic_write_text(target, page)
    return target


def _row(s: Suspect, oof: OutOfFold, index: dict[str, int]) -> dict[str, Any]:
    """One report row: the labels, their probabilities, the thumbnails."""
    dup = index.get(s.duplicate) if s.duplicate else None
    return {
        "path": s.path,
        "given": s.given,
        "suggested": s.suggested,
        "score": f"{s.score:.3f}",
        "reasons": s.reasons,
        "p_given": f"{oof.probs[s.index, oof.labels[s.index]]:.3f}",
        "p_suggested": f"{oof.probs[s.index].max():.3f}",
        "thumb": _uri(thumbnail_png(oof.images[s.index])) if oof.images is not None else "",
        "dup_thumb": _uri(thumbnail_png(oof.images[dup]))
        if dup is not None and oof.images is not None
        else "",
        "duplicate": s.duplicate,
        "duplicate_label": s.duplicate_label,
        "similarity": f"{s.similarity:.3f}" if s.similarity is not None else "",
    }


def save_grid(
    findings: AuditFindings,
    oof: OutOfFold,
    path: str | os.PathLike[str],
    *,
    n: int = 50,
    columns: int = 10,
    title: str | None = None,
) -> Path:
    """The `n` most suspect images in a grid, each captioned `given → suggested`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if oof.images is None:
        raise ValueError("the out-of-fold result holds no images")
    chosen = findings.suspects[:n]
    rows = max(1, -(-len(chosen) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.45, rows * 1.75), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, chosen, strict=False):
        image = oof.images[s.index].transpose(1, 2, 0)
        ax.imshow(
            image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray", interpolation="nearest"
        )
        ax.set_title(f"{s.given}\n→ {s.suggested}  {s.score:.2f}", fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(target, binary=True) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return target
