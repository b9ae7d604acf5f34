"""Prediction history in SQL (SQLAlchemy 2 Core): a SQLite file by default, PostgreSQL by URL.

The service never writes here on the request path: rows go through `DurableHistoryWriter`
(serve/history/journal.py), which journals them locally and retries. This module is the
synchronous table access both the writer and the `/predictions` endpoints use. Table names
carry a configurable prefix so several deployments (or test runs) can share one database.
The SQLite file holds every client's predictions and labels: it is made (and kept) mode
0600, like the API key file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from visiondeck.serve.errors import ServeError
from visiondeck.serve.history.scores import uncertainty

__all__ = ["PredictionQuery", "PredictionRecord", "PredictionStore", "StoreUnavailable",
           "csv_cell", "new_prediction_id", "to_csv"]


class StoreUnavailable(ServeError):
    status, code = 503, "store_unavailable"


@dataclass
class PredictionRecord:
    """One stored prediction (the API's history row)."""

    id: str
    created_at: datetime
    model_name: str
    model_version: str
    predicted: str
    confidence: float
    unknown: bool
    top_k: list[dict[str, Any]]
    latency_ms: float
    image_sha256: str
    image_width: int
    image_height: int
    endpoint: str = "predict"
    label: str | None = None
    client: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False)
    # added for drift monitoring (nullable; rows from before have none): the decoded
    # image's mean and standard deviation (0..255), and the monitor's embedding projection
    # {"ref": reference id, "z": [...], "r": residual}
    brightness: float | None = None
    contrast: float | None = None
    features: dict[str, Any] | None = field(default=None, repr=False)
    # added for the review queue: how uncertain the prediction was (serve/history/scores.py),
    # filled from top_k when not given, so every path that makes a row stores them
    margin: float | None = None
    entropy: float | None = None
    # added for multi-label models (None on single-label rows): the labels that passed
    # their thresholds and the true label set (`label` holds both sets' text joined by "|")
    predicted_labels: list[str] | None = None
    true_labels: list[str] | None = None

    def __post_init__(self) -> None:
        if self.margin is None or self.entropy is None:
            self.margin, self.entropy = uncertainty(self.top_k, self.confidence)

    def to_json(self, *, thumbnail: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = _iso(self.created_at)
        blob = data.pop("thumbnail")
        if thumbnail and blob is not None:
            import base64

            data["thumbnail_png_base64"] = base64.b64encode(blob).decode("ascii")
        data["has_thumbnail"] = blob is not None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictionRecord:
        """Inverse of `to_json(thumbnail=True)` (the spool format of earlier versions)."""
        import base64

        data = dict(data)
        data.pop("has_thumbnail", None)
        blob = data.pop("thumbnail_png_base64", None)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data, thumbnail=base64.b64decode(blob) if blob else None)


@dataclass(frozen=True)
class PredictionQuery:
    """Filters and paging for `/predictions` (all optional, combined with AND)."""

    predicted: str | None = None
    model_version: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    unknown: bool | None = None
    labelled: bool | None = None
    image_sha256: str | None = None
    #: this label is predicted: in the passing set of a multi-label row, the class of others
    label: str | None = None
    limit: int = 50
    offset: int = 0
    newest_first: bool = True


def _utc(value: datetime) -> datetime:
    """Aware UTC; naive values are taken as UTC (SQLite keeps no zone, so store UTC only)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return _utc(value).isoformat()


class PredictionStore:
    """The predictions table; `create()` makes it if missing (idempotent)."""

    COLUMNS = ("id", "created_at", "model_name", "model_version", "predicted", "confidence",
               "unknown", "top_k", "latency_ms", "image_sha256", "image_width",
               "image_height", "endpoint", "label", "client", "brightness", "contrast",
               "predicted_labels", "true_labels")
    #: columns added after the first release: nullable, added in place to older tables
    ADDED_COLUMNS = ("brightness", "contrast", "features", "margin", "entropy",
                     "predicted_labels", "true_labels")

    def __init__(self, url: str, *, prefix: str = "visiondeck_", connect_timeout: float = 3.0
                 ) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 15, "check_same_thread": False}
        elif url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": max(1, int(connect_timeout))}
        self.engine: Engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            database = self.engine.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                sa.event.listen(self.engine, "do_connect",
                                lambda *_: _private_file(database))
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            f"{prefix}predictions", self.metadata,
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
            sa.Column("model_name", sa.String(200), nullable=False),
            sa.Column("model_version", sa.String(64), nullable=False, index=True),
            sa.Column("predicted", sa.String(200), nullable=False, index=True),
            sa.Column("confidence", sa.Float, nullable=False),
            sa.Column("unknown", sa.Boolean, nullable=False),
            sa.Column("top_k", sa.JSON, nullable=False),
            sa.Column("latency_ms", sa.Float, nullable=False),
            sa.Column("image_sha256", sa.String(64), nullable=False, index=True),
            sa.Column("image_width", sa.Integer, nullable=False),
            sa.Column("image_height", sa.Integer, nullable=False),
            sa.Column("endpoint", sa.String(32), nullable=False),
            sa.Column("label", sa.String(200), nullable=True),
            sa.Column("client", sa.String(100), nullable=True),
            sa.Column("thumbnail", sa.LargeBinary, nullable=True),
            sa.Column("brightness", sa.Float, nullable=True),
            sa.Column("contrast", sa.Float, nullable=True),
            sa.Column("features", sa.JSON, nullable=True),
            sa.Column("margin", sa.Float, nullable=True),
            sa.Column("entropy", sa.Float, nullable=True),
            # SQL NULL (not JSON null) on single-label rows, so `is_(None)` finds them
            sa.Column("predicted_labels", sa.JSON(none_as_null=True), nullable=True),
            sa.Column("true_labels", sa.JSON(none_as_null=True), nullable=True),
        )
        self._created = False
        self._create_lock = threading.Lock()
        self._fast = self._fast_insert()

    # ----------------------------------------------------------------------- writing

    def create(self) -> None:
        if self._created:
            return
        with self._create_lock:  # the writer thread and readers may arrive together
            if not self._created:
                self._create_tables()
                self._add_missing_columns()
                self._fill_scores()
                self._created = True

    def _create_tables(self) -> None:
        """CREATE TABLE IF absent, once more when another process won the race.

        `serve --workers N` starts its workers together on a fresh database, and the
        check-then-create of `create_all` is not atomic across connections: the loser's
        CREATE fails with "already exists" (SQLite) or a duplicate-table/pg_type error
        (PostgreSQL). The second check then finds the winner's tables; an error that is
        not this race raises again from the retry."""
        try:
            self.metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.DBAPIError:
            time.sleep(0.05)
            self.metadata.create_all(self.engine, checkfirst=True)

    def _add_missing_columns(self) -> None:
        """Upgrade a table written by an older VisionDeck: ALTER TABLE ADD the nullable
        columns it lacks (SQLite and PostgreSQL both do this in place, keeping every row).
        Another process adding the same column at the same moment is not an error."""
        name = self.table.name
        present = {c["name"] for c in sa.inspect(self.engine).get_columns(name)}
        quote = self.engine.dialect.identifier_preparer.quote
        for column_name in self.ADDED_COLUMNS:
            if column_name in present:
                continue
            column = self.table.c[column_name]
            ddl = (f"ALTER TABLE {quote(name)} ADD COLUMN {quote(column_name)} "
                   f"{column.type.compile(dialect=self.engine.dialect)}")
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(ddl))
            except sa.exc.DBAPIError:
                again = {c["name"] for c in sa.inspect(self.engine).get_columns(name)}
                if column_name not in again:
                    raise

    def _fill_scores(self, batch: int = 2000) -> int:
        """Margin and entropy of rows written before those columns existed (or by an older
        replica still running), computed from their stored top-k; once per process start,
        a scan that finds nothing after the first upgrade. Answers the rows filled."""
        t, filled, last = self.table, 0, ""
        missing = sa.or_(t.c.margin.is_(None), t.c.entropy.is_(None))
        update = (t.update().where(t.c.id == sa.bindparam("row_id"))
                  .values(margin=sa.bindparam("row_margin"),
                          entropy=sa.bindparam("row_entropy")))
        while True:  # keyset paging on the primary key: one pass over the table, not one per batch
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(t.c.id, t.c.top_k, t.c.confidence)
                                    .where(missing, t.c.id > last).order_by(t.c.id)
                                    .limit(batch)).all()
                if rows:
                    last = rows[-1].id
                    conn.execute(update, [
                        dict(zip(("row_id", "row_margin", "row_entropy"),
                                 (row.id, *uncertainty(row.top_k, row.confidence)),
                                 strict=True)) for row in rows])
            filled += len(rows)
            if len(rows) < batch:
                return filled

    def insert_many(self, records: Sequence[PredictionRecord]) -> None:
        """Insert rows in one transaction; rows already present (a retried batch) are skipped.

        SQLite and PostgreSQL take one `INSERT ... ON CONFLICT (id) DO NOTHING` through the
        driver's executemany, each value passed through the column type's own bind processor
        (so rows are stored exactly as SQLAlchemy would store them): this runs for every
        prediction the service answers, and SQLAlchemy's per-row parameter handling cost as
        much CPU as SQLite's own insert. Other databases take the portable path: look up the
        ids already present, insert the rest.
        """
        if not records:
            return
        self.create()
        with self.engine.begin() as conn:
            if self._fast is not None:
                statement, processors = self._fast
                conn.exec_driver_sql(statement, [
                    tuple(value if process is None else process(value)
                          for value, process in zip(_values(r), processors, strict=True))
                    for r in records])
                return
            ids = [r.id for r in records]
            present = set(conn.execute(sa.select(self.table.c.id)
                                       .where(self.table.c.id.in_(ids))).scalars())
            rows = [_row(r) for r in records if r.id not in present]
            if rows:
                conn.execute(self.table.insert(), rows)

    def _fast_insert(self) -> tuple[str, list[Any]] | None:
        """(statement, bind processors in `_FIELDS` order) of the driver-level insert, or
        None where the portable path is taken (another database or parameter style)."""
        dialect = self.engine.dialect
        marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
        if dialect.name not in ("sqlite", "postgresql") or marker is None:
            return None
        quote = dialect.identifier_preparer.quote
        statement = (f"INSERT INTO {quote(self.table.name)} "
                     f"({', '.join(quote(name) for name in _FIELDS)}) VALUES "
                     f"({', '.join([marker] * len(_FIELDS))}) "
                     f"ON CONFLICT ({quote('id')}) DO NOTHING")
        types = [self.table.c[name].type.dialect_impl(dialect) for name in _FIELDS]
        return statement, [type_.bind_processor(dialect) for type_ in types]

    def set_label(self, prediction_id: str, label: str | None,
                  labels: list[str] | None = None) -> bool:
        """The true label (`labels`: the true set of a multi-label row, `label` its text)."""
        self.create()
        with self.engine.begin() as conn:
            result = conn.execute(self.table.update().where(self.table.c.id == prediction_id)
                                  .values(label=_text(label), true_labels=labels))
        return bool(result.rowcount)

    def drop(self) -> None:
        """Remove the table (tests, and `keys`-style admin clean-up)."""
        self.metadata.drop_all(self.engine, checkfirst=True)
        self._created = False

    def dispose(self) -> None:
        self.engine.dispose()

    # ----------------------------------------------------------------------- reading

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    def query(self, q: PredictionQuery) -> tuple[list[PredictionRecord], int]:
        """Matching rows (a page) and the total number of matches."""
        self.create()
        t = self.table
        where = self._where(q)
        order = t.c.created_at.desc() if q.newest_first else t.c.created_at.asc()
        select = sa.select(t).where(*where).order_by(order, t.c.id).limit(q.limit).offset(q.offset)
        count = sa.select(sa.func.count()).select_from(t).where(*where)
        with self.engine.connect() as conn:
            rows = [_record(row) for row in conn.execute(select).mappings()]
            total = int(conn.execute(count).scalar_one())
        return rows, total

    def iter_records(self, q: PredictionQuery, *, page: int = 5000
                     ) -> Iterable[PredictionRecord]:
        """Every row matching `q` (its limit and offset ignored), oldest first, without
        thumbnails, read `page` rows at a time: what reports and retraining scan."""
        self.create()
        t = self.table
        columns = [c for c in t.c if c.name != "thumbnail"]
        where = self._where(q)
        last: tuple[datetime, str] | None = None
        while True:
            select = sa.select(*columns).where(*where)
            if last is not None:  # keyset paging: stable while rows are being added
                select = select.where(sa.or_(t.c.created_at > last[0], sa.and_(
                    t.c.created_at == last[0], t.c.id > last[1])))
            select = select.order_by(t.c.created_at.asc(), t.c.id.asc()).limit(page)
            with self.engine.connect() as conn:
                rows = [_record(row) for row in conn.execute(select).mappings()]
            yield from rows
            if len(rows) < page:
                return
            last = (_utc(rows[-1].created_at), rows[-1].id)

    def labelled_pairs(self, model_version: str, limit: int = 1000) -> list[tuple[str, str]]:
        """(predicted, label) of the newest labelled predictions of one model version."""
        self.create()
        t = self.table
        select = (sa.select(t.c.predicted, t.c.label)
                  .where(t.c.model_version == model_version, t.c.label.is_not(None))
                  .order_by(t.c.created_at.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [(row[0], row[1]) for row in conn.execute(select)]

    def get(self, prediction_id: str) -> PredictionRecord | None:
        self.create()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(self.table).where(self.table.c.id == prediction_id)
                               ).mappings().first()
        return None if row is None else _record(row)

    def _where(self, q: PredictionQuery) -> list[Any]:
        t, where = self.table, []
        if q.predicted is not None:
            where.append(t.c.predicted == q.predicted)
        if q.model_version is not None:
            where.append(t.c.model_version == q.model_version)
        if q.min_confidence is not None:
            where.append(t.c.confidence >= q.min_confidence)
        if q.max_confidence is not None:
            where.append(t.c.confidence <= q.max_confidence)
        if q.since is not None:
            where.append(t.c.created_at >= _utc(q.since))
        if q.until is not None:
            where.append(t.c.created_at < _utc(q.until))
        if q.unknown is not None:
            where.append(t.c.unknown.is_(q.unknown))
        if q.labelled is not None:
            where.append(t.c.label.is_not(None) if q.labelled else t.c.label.is_(None))
        if q.image_sha256 is not None:
            where.append(t.c.image_sha256 == q.image_sha256)
        if q.label is not None:
            # an element of the stored JSON list appears in its text exactly as json.dumps
            # writes it, quotes included, so "a" never matches inside "ab"
            element = json.dumps(q.label)
            where.append(sa.or_(
                sa.and_(t.c.predicted_labels.is_(None), t.c.predicted == q.label),
                sa.cast(t.c.predicted_labels, sa.Text).contains(element, autoescape=True)))
        return where


def to_csv(records: Iterable[PredictionRecord]) -> str:
    """CSV export: one row per prediction, top-k as JSON in one column, every text cell
    through `csv_cell` (labels, classes and client names come from clients)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(PredictionStore.COLUMNS)
    for record in records:
        data = record.to_json()
        data["top_k"] = json.dumps(record.top_k, separators=(",", ":"))
        for name in ("predicted_labels", "true_labels"):
            if data[name] is not None:
                data[name] = json.dumps(data[name], separators=(",", ":"))
        writer.writerow([csv_cell(data[c]) for c in PredictionStore.COLUMNS])
    return buffer.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting like a formula (`=`, `+`,
    `-`, `@`, tab, CR) gets a leading single quote (OWASP's CSV injection advice), so a label
    `=HYPERLINK(...)` is never evaluated. Numbers and booleans stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _private_file(path: str) -> None:
    """Before SQLite opens the file: create it 0600, and narrow an older file (and its WAL
    and shared-memory files, which SQLite creates with the database's mode) to 0600."""
    with contextlib.suppress(OSError):  # no folder yet, or not ours: SQLite reports that
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):  # absent, or another user's file
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, 0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer thread
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _values(record: PredictionRecord) -> list[Any]:
    """The stored values of a record, in `_FIELDS` order. Shallow on purpose:
    dataclasses.asdict deep-copies top_k and features for every row, a measurable share of
    the writer's time at several hundred predictions a second."""
    values = [getattr(record, name) for name in _FIELDS]
    values[_CREATED_AT] = _utc(record.created_at)
    for i in _TEXT_FIELDS:
        values[i] = _text(values[i])
    return values


def _text(value: str | None) -> str | None:
    """Text as both databases store it: PostgreSQL refuses NUL in text columns, and a
    client's label carrying one would fail its whole batch on every retry (the history of
    every later prediction stuck behind it); U+FFFD takes its place, in SQLite too."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def _row(record: PredictionRecord) -> dict[str, Any]:
    return dict(zip(_FIELDS, _values(record), strict=True))


_FIELDS = tuple(f.name for f in fields(PredictionRecord))
_CREATED_AT = _FIELDS.index("created_at")
_TEXT_FIELDS = tuple(i for i, f in enumerate(fields(PredictionRecord))
                     if f.type in ("str", "str | None"))


def new_prediction_id() -> str:
    """32 hex digits laid out as a UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then
    74 random bits. Ids sort by creation time, so the history table's primary key grows
    at its end instead of at random places (a fifth less CPU per stored row in SQLite),
    and the 74 random bits keep them unguessable, as the label tokens assume."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((millis & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 64 & 0xFFF) << 64
             | 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF)
    return f"{value:032x}"


def _record(row: Any) -> PredictionRecord:
    data = dict(row)
    created = data["created_at"]
    if isinstance(created, datetime) and created.tzinfo is None:
        data["created_at"] = created.replace(tzinfo=UTC)  # SQLite drops the zone
    return PredictionRecord(**data)
