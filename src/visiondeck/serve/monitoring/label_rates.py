"""Per-label positive rates of a multi-label model: live traffic against the reference.

A multi-label model has no single "class mix": each label is its own yes/no question, and
the shift that matters is a label passing more or less often than it did on held-out data.
The live rates are read from the prediction history (the newest rows of the served version,
so every worker and replica counts, and a restart keeps them); the reference rates come
from the Bundle's reference statistics (`ReferenceStats.label_rates`) when it has them.
Without a history the process's own Prometheus counters stand in.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from visiondeck.monitor import ReferenceStats

__all__ = ["label_rates", "read_live_counts"]


def read_live_counts(store: Any, model_version: str, classes: list[str], limit: int
                     ) -> tuple[int, list[int]]:
    """(images, positives per label in class order) of the newest `limit` multi-label rows
    of `model_version` in the history (blocking: call it in a thread)."""
    store.create()
    t = store.table
    select = (sa.select(t.c.predicted_labels)
              .where(t.c.model_version == model_version, t.c.predicted_labels.is_not(None))
              .order_by(t.c.created_at.desc()).limit(limit))
    index = {name: i for i, name in enumerate(classes)}
    counts = [0] * len(classes)
    images = 0
    with store.engine.connect() as conn:
        for (passed,) in conn.execute(select):
            images += 1
            for name in passed or ():
                if name in index:
                    counts[index[name]] += 1
    return images, counts


def label_rates(classes: list[str], images: int, positives: list[int],
                reference: ReferenceStats | None) -> list[dict[str, Any]]:
    """One entry per label: live positive rate (None before any image), the reference's
    rate (None without reference statistics) and their difference."""
    shares = reference.label_rates if reference is not None else {}
    out = []
    for name, count in zip(classes, positives, strict=True):
        live = round(count / images, 6) if images else None
        ref = shares.get(name)
        out.append({"label": name, "positives": count, "live_rate": live,
                    "reference_rate": None if ref is None else round(ref, 6),
                    "difference": None if live is None or ref is None
                    else round(live - ref, 6)})
    return out
