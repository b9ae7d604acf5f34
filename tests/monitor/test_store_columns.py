"""The prediction store's monitoring columns: older databases still open (and gain the
columns in place), and the readers reports and retraining use."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.serve.test_store import PG_URL, require_postgres
from visiondeck.serve.history.store import PredictionQuery, PredictionRecord, PredictionStore

# the table as the first release of the service created it
_OLD_TABLE = """CREATE TABLE {name} (
    id VARCHAR(32) PRIMARY KEY, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    model_name VARCHAR(200) NOT NULL, model_version VARCHAR(64) NOT NULL,
    predicted VARCHAR(200) NOT NULL, confidence FLOAT NOT NULL, unknown BOOLEAN NOT NULL,
    top_k {json} NOT NULL, latency_ms FLOAT NOT NULL, image_sha256 VARCHAR(64) NOT NULL,
    image_width INTEGER NOT NULL, image_height INTEGER NOT NULL, endpoint VARCHAR(32) NOT NULL,
    label VARCHAR(200), client VARCHAR(100), thumbnail {blob})"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> Iterator[str]:
    if request.param == "postgresql":
        require_postgres()
    yield f"sqlite:///{tmp_path / 'old.db'}" if request.param == "sqlite" else PG_URL


def _old_database(url: str, prefix: str) -> None:
    engine = sa.create_engine(url)
    pg = url.startswith("postgresql")
    with engine.begin() as conn:
        conn.execute(sa.text(_OLD_TABLE.format(name=f"{prefix}predictions",
                                               json="JSON" if pg else "TEXT",
                                               blob="BYTEA" if pg else "BLOB")))
        conn.execute(sa.text(
            f"INSERT INTO {prefix}predictions VALUES ('{'a' * 32}', :t, 'm', 'v1', 'cat', "
            "0.9, false, '[]', 1.0, :sha, 16, 16, 'predict', 'cat', NULL, NULL)"),
            {"t": datetime(2024, 1, 1, tzinfo=UTC), "sha": "0" * 64})
    engine.dispose()


def _record(i: int, **changes) -> PredictionRecord:
    values = dict(id=uuid.uuid4().hex, created_at=datetime(2025, 1, 1, tzinfo=UTC)
                  + timedelta(seconds=i), model_name="m", model_version="v2", predicted="cat",
                  confidence=0.8, unknown=False, top_k=[], latency_ms=1.0,
                  image_sha256=f"{i:064x}", image_width=16, image_height=16)
    return PredictionRecord(**(values | changes))


def test_a_database_from_before_monitoring_opens_and_gains_the_columns(url: str) -> None:
    prefix = f"vdold_{uuid.uuid4().hex[:8]}_"
    _old_database(url, prefix)
    store = PredictionStore(url, prefix=prefix)
    try:
        rows, total = store.query(PredictionQuery())
        assert total == 1 and rows[0].label == "cat" and rows[0].brightness is None
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns(f"{prefix}predictions")}
        assert {"brightness", "contrast", "features"} <= columns
        record = _record(1, brightness=81.5, contrast=12.25,
                         features={"ref": "r", "z": [0.5], "r": 1.0})
        store.insert_many([record])
        new = store.get(record.id)
        assert new is not None and new.brightness == 81.5
        assert new.features == {"ref": "r", "z": [0.5], "r": 1.0}
        # a second process opening the same (now upgraded) table changes nothing
        again = PredictionStore(url, prefix=prefix)
        assert again.query(PredictionQuery())[1] == 2
        again.dispose()
    finally:
        store.drop()
        store.dispose()


def test_two_processes_upgrading_at_once_both_succeed(url: str) -> None:
    prefix = f"vdold_{uuid.uuid4().hex[:8]}_"
    _old_database(url, prefix)
    stores = [PredictionStore(url, prefix=prefix) for _ in range(3)]
    errors: list[BaseException] = []

    def open_store(store: PredictionStore) -> None:
        try:
            store.create()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert stores[0].query(PredictionQuery())[1] == 1
    finally:
        stores[0].drop()
        for store in stores:
            store.dispose()


def test_iter_records_pages_through_everything_without_thumbnails(tmp_path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}")
    records = [_record(i, thumbnail=b"png", label="dog" if i % 4 == 0 else None)
               for i in range(23)]
    store.insert_many(records[::-1])  # insertion order does not matter
    rows = list(store.iter_records(PredictionQuery(limit=5), page=4))
    assert [r.id for r in rows] == [r.id for r in records]  # oldest first, all of them
    assert all(r.thumbnail is None for r in rows)
    since = records[10].created_at
    assert len(list(store.iter_records(PredictionQuery(since=since), page=3))) == 13
    pairs = store.labelled_pairs("v2", limit=3)
    assert pairs == [("cat", "dog")] * 3
    assert len(store.labelled_pairs("v2")) == 6 and store.labelled_pairs("v1") == []
    store.dispose()


class _SlowStore(PredictionStore):
    """A real SQLite store whose inserts wait for a signal: a batch caught mid-write."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered, self.release = threading.Event(), threading.Event()

    def insert_many(self, records) -> None:
        rows = [dataclasses.replace(r) for r in records]  # serialised, as before any commit
        self.entered.set()
        assert self.release.wait(10)
        super().insert_many(rows)


def test_a_label_sent_while_its_row_is_being_written_is_kept(tmp_path) -> None:
    from visiondeck.serve.history.journal import DurableHistoryWriter

    store = _SlowStore(f"sqlite:///{tmp_path / 'p.db'}")
    writer = DurableHistoryWriter(store, tmp_path / "journal", commit_interval_s=0.01)
    record = _record(1)
    writer.submit(record)
    writer.start()
    assert store.entered.wait(10)  # the row is in flight now
    assert writer.update_pending(record.id, "dog") is True
    assert writer.annotate(record.id, brightness=1.0) is False  # too late for extra values
    store.release.set()
    assert writer.flush(10)
    writer.close()
    assert store.get(record.id).label == "dog"
    store.dispose()
