"""The review queue: stored predictions ordered by how much a person's label would teach.

One SQL query (SQLite and PostgreSQL alike) ranks the rows of the prediction table; the
web page's Review tab and `GET /review/queue` read it. It orders on what every row keeps:

- margin and entropy: the row's own columns, written with it from its top-k
  (serve/history/scores.py holds their one definition);
- unknown: the server's flag (the image looks unlike the training data);
- drifted: the row's embedding residual (what the drift monitor stores in `features.r`)
  lies above a cut the caller gives: the served model's reference residual at a high
  percentile (serve/routes/review.py). Rows projected against another reference, or
  never projected, are not drifted.

`sort="priority"` (the default) puts rows with more flags (unknown, drifted) first, then
the smallest margin, then the largest entropy, then the newest. A page sorts the rows its
filters leave (model version and time use the table's indexes); the drift flag reads two
JSON fields per row, the rest are plain columns (benchmarks/bench_review_queue.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from visiondeck.serve.history.store import (
    PredictionQuery,
    PredictionRecord,
    PredictionStore,
)
from visiondeck.serve.history.store import _record as stored_record

__all__ = ["DriftCut", "ReviewItem", "ReviewPage", "ReviewQuery", "review_queue"]

ReviewStatus = Literal["waiting", "labelled", "all"]
ReviewSort = Literal["priority", "margin", "entropy", "newest"]


@dataclass(frozen=True)
class DriftCut:
    """Rows projected against `reference` with an embedding residual above `residual`."""

    reference: str
    residual: float


@dataclass(frozen=True)
class ReviewQuery:
    """Filters, order and paging of the queue (all filters combined with AND)."""

    model_version: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: ReviewStatus = "waiting"
    sort: ReviewSort = "priority"
    drift: DriftCut | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class ReviewItem:
    """One row of the queue: the stored prediction (without its thumbnail) and its scores."""

    record: PredictionRecord
    drifted: bool
    has_thumbnail: bool

    def to_json(self) -> dict[str, Any]:
        """As `/predictions` answers a row (margin and entropy included), plus `drifted`."""
        data = self.record.to_json()
        data.update(drifted=self.drifted, has_thumbnail=self.has_thumbnail)
        return data


@dataclass(frozen=True)
class ReviewPage:
    """A page of the queue, how many rows its order covers, and the two counts the page
    shows: rows of these filters still waiting for a label, and rows already labelled."""

    items: list[ReviewItem]
    total: int
    waiting: int
    labelled: int


def _drifted(store: PredictionStore, drift: DriftCut | None) -> Any:
    """Whether a row is drifted, as an SQL expression (never NULL). The residual is
    compared first: most rows are below the cut, and the reference is then not read."""
    t = store.table
    if drift is None:
        return sa.false()
    return sa.func.coalesce(
        sa.and_(
            t.c.features.is_not(None),
            t.c.features["r"].as_float() > drift.residual,
            t.c.features["ref"].as_string() == drift.reference,
        ),
        False,
    )


def _where(store: PredictionStore, q: ReviewQuery, status: ReviewStatus) -> list[Any]:
    labelled = {"waiting": False, "labelled": True, "all": None}[status]
    return store._where(
        PredictionQuery(
            model_version=q.model_version, since=q.since, until=q.until, labelled=labelled
        )
    )


def review_queue(store: PredictionStore, q: ReviewQuery) -> ReviewPage:
    """The page of the queue `q` asks for, with its counts (one connection, three reads).

    The order is found on the sort keys alone (plain columns, and the drift flag only when
    the order uses it); the page's rows are then read whole by id, their drift flag with
    them, so a wide row or its JSON is never carried through the sort.
    """
    store.create()
    t = store.table
    margin, entropy = t.c.margin, t.c.entropy
    newest = (t.c.created_at.desc(), t.c.id.desc())
    if q.sort == "priority":
        flags = sa.case((t.c.unknown.is_(True), 1), else_=0) + sa.case(
            (_drifted(store, q.drift), 1), else_=0
        )
        order: tuple[Any, ...] = (
            flags.desc(),
            margin.asc().nulls_last(),
            entropy.desc().nulls_last(),
            *newest,
        )
    else:
        order = {
            "margin": (margin.asc().nulls_last(), *newest),
            "entropy": (entropy.desc().nulls_last(), *newest),
            "newest": newest,
        }[q.sort]
    ranked = (
        sa.select(t.c.id)
        .where(*_where(store, q, q.status))
        .order_by(*order)
        .limit(q.limit)
        .offset(q.offset)
    )
    columns = [c for c in t.c if c.name != "thumbnail"]
    both = _where(store, q, "all")
    counts = sa.select(sa.func.count(), sa.func.count(t.c.label)).select_from(t).where(*both)
    with store.engine.connect() as conn:
        ids = list(conn.execute(ranked).scalars())
        rows = {}
        if ids:
            page = sa.select(
                *columns,
                _drifted(store, q.drift).label("review_drifted"),
                t.c.thumbnail.is_not(None).label("review_thumbnail"),
            ).where(t.c.id.in_(ids))
            rows = {row["id"]: dict(row) for row in conn.execute(page).mappings()}
        everything, labelled = conn.execute(counts).one()
    items = []
    for row_id in ids:
        data = rows.get(row_id)
        if data is None:  # deleted between the two reads
            continue
        drifted, thumbnail = data.pop("review_drifted"), data.pop("review_thumbnail")
        items.append(ReviewItem(stored_record(data), bool(drifted), bool(thumbnail)))
    waiting = int(everything) - int(labelled)
    total = {"waiting": waiting, "labelled": int(labelled), "all": int(everything)}[q.status]
    return ReviewPage(items, total, waiting, int(labelled))
