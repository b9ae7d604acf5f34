"""Prediction history: SQLite and PostgreSQL, filters, export, and database outages."""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.serve.conftest import learnable_png
from tests.serve.proxy import OutageProxy
from visiondeck.serve.history.journal import StoreWriter
from visiondeck.serve.history.store import PredictionQuery, PredictionRecord, PredictionStore

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_available() -> bool:
    try:
        import psycopg

        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                        connect_timeout=2).close()
        return True
    except Exception:
        return False


needs_pg = pytest.mark.skipif(not _pg_available(), reason="PostgreSQL at 127.0.0.1:5432 needed")


def _prefix() -> str:
    return f"vdtest_{uuid.uuid4().hex[:10]}_"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
def store(request, tmp_path) -> Iterator[PredictionStore]:
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else PG_URL
    store = PredictionStore(url, prefix=_prefix())
    yield store
    store.drop()
    store.dispose()


def _record(i: int, *, predicted: str = "left", confidence: float = 0.9,
            created: datetime | None = None, **changes) -> PredictionRecord:
    values = dict(
        id=uuid.uuid4().hex, created_at=created or datetime.now(UTC), model_name="m",
        model_version="v1", predicted=predicted, confidence=confidence, unknown=False,
        top_k=[{"class": predicted, "probability": confidence}], latency_ms=1.5,
        image_sha256=f"{i:064x}", image_width=16, image_height=16, thumbnail=b"\x89PNG")
    values.update(changes)
    return PredictionRecord(**values)


def test_store_round_trip_filters_and_paging(store) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    records = [_record(i, predicted=["left", "right"][i % 2], confidence=0.5 + i / 40,
                       created=base + timedelta(minutes=i), unknown=i == 3,
                       label="left" if i == 4 else None) for i in range(10)]
    store.insert_many(records)
    store.insert_many(records[:2])  # a retried batch: no duplicates, no error
    rows, total = store.query(PredictionQuery(limit=3))
    assert total == 10 and [r.id for r in rows] == [r.id for r in records[::-1][:3]]
    assert rows[0].created_at == records[-1].created_at and rows[0].thumbnail == b"\x89PNG"
    page2, _ = store.query(PredictionQuery(limit=3, offset=3, newest_first=False))
    assert [r.id for r in page2] == [r.id for r in records[3:6]]
    assert store.query(PredictionQuery(predicted="right"))[1] == 5
    assert store.query(PredictionQuery(min_confidence=0.6, max_confidence=0.7))[1] == 5
    assert store.query(PredictionQuery(since=base + timedelta(minutes=7)))[1] == 3
    assert store.query(PredictionQuery(until=base + timedelta(minutes=2)))[1] == 2
    assert [r.id for r in store.query(PredictionQuery(unknown=True))[0]] == [records[3].id]
    assert store.query(PredictionQuery(labelled=True))[1] == 1
    assert store.set_label(records[0].id, "right") and not store.set_label("0" * 32, "x")
    assert store.get(records[0].id).label == "right"
    assert store.get(records[0].id).top_k == records[0].top_k


def test_history_endpoints_and_csv(make_client) -> None:
    client = make_client()
    ids = []
    for i, cls in enumerate(["left", "right", "right"]):
        body = client.post("/predict", files={"file": learnable_png(cls, seed=i)},
                           data={"label": cls}).json()
        ids.append(body["id"])
    assert client.app.state.services.writer.flush(10)
    page = client.get("/predictions?limit=2").json()
    assert page["total"] == 3 and len(page["items"]) == 2
    assert page["items"][0]["id"] == ids[-1] and page["items"][0]["label"] == "right"
    right = client.get("/predictions", params={"class": "right"}).json()
    assert {item["id"] for item in right["items"]} == set(ids[1:])
    exported = client.get("/predictions?format=csv")
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert {row["id"] for row in rows} == set(ids)
    assert rows[0]["predicted"] in ("left", "right") and rows[0]["top_k"].startswith("[")
    one = client.get(f"/predictions/{ids[0]}").json()
    assert one["predicted"] == "left" and one["has_thumbnail"] is True
    thumb = client.get(f"/predictions/{ids[0]}/thumbnail")
    assert thumb.headers["content-type"] == "image/png" and thumb.content[:4] == b"\x89PNG"
    assert client.get(f"/predictions/{'f' * 32}").status_code == 404
    assert client.get("/predictions/not-an-id").status_code == 422


def test_label_with_token(make_client) -> None:
    client = make_client()
    body = client.post("/predict", files={"file": learnable_png("left")}).json()
    url = f"/predictions/{body['id']}/label"
    assert client.put(url, json={"label": "middle", "token": "0" * 32}).status_code == 401
    assert client.put(url, json={"label": "middle", "token": body["label_token"]}
                      ).status_code == 200
    client.app.state.services.writer.flush(10)
    assert client.get(f"/predictions/{body['id']}").json()["label"] == "middle"
    assert client.put(url, json={"label": "right", "token": body["label_token"]}
                      ).status_code == 200  # now an UPDATE of the stored row
    assert client.get(f"/predictions/{body['id']}").json()["label"] == "right"


class _FlakyStore:
    """Fails the first `failures` writes, then records what it was given."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.rows: list[PredictionRecord] = []

    def insert_many(self, records) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database is down")
        self.rows.extend(r for r in records if r.id not in {x.id for x in self.rows})


def test_writer_retries_and_spools_at_shutdown(tmp_path) -> None:
    flaky = _FlakyStore(failures=2)
    writer = StoreWriter(flaky, spool_path=tmp_path / "spool.jsonl", retry_initial_s=0.01)
    writer.start()
    records = [_record(i) for i in range(5)]
    for record in records:
        writer.submit(record)
    assert writer.flush(5)
    assert [r.id for r in flaky.rows] == [r.id for r in records] and writer.failures == 2
    writer.close()

    down = _FlakyStore(failures=10**9)
    writer = StoreWriter(down, spool_path=tmp_path / "spool.jsonl", retry_initial_s=0.01)
    writer.start()
    for record in records:
        writer.submit(record)
    assert writer.close(flush_timeout_s=0.2) == 5  # nothing lost: spooled
    assert len((tmp_path / "spool.jsonl").read_text().splitlines()) == 5

    back = _FlakyStore(failures=0)
    writer = StoreWriter(back, spool_path=tmp_path / "spool.jsonl")
    writer.start()  # replays the spool first
    assert writer.flush(5)
    writer.close()
    assert [r.id for r in back.rows] == [r.id for r in records]
    assert back.rows[0].thumbnail == b"\x89PNG" and not (tmp_path / "spool.jsonl").exists()


@needs_pg
def test_postgres_outage_never_fails_predictions(make_client) -> None:
    proxy = OutageProxy(("127.0.0.1", 5432))
    prefix = _prefix()
    direct = PredictionStore(PG_URL, prefix=prefix)
    try:
        client = make_client(database_url=f"postgresql+psycopg://postgres@127.0.0.1:"
                                          f"{proxy.port}/test", table_prefix=prefix)
        writer = client.app.state.services.writer
        writer.retry_max_s = 0.2
        first = client.post("/predict", files={"file": learnable_png("left")}).json()
        assert writer.flush(10)
        proxy.down()
        ids = []
        for i in range(4):
            response = client.post("/predict", files={"file": learnable_png("right", seed=i)})
            assert response.status_code == 200  # the database is down; predictions are not
            ids.append(response.json()["id"])
        deadline = time.monotonic() + 10
        while writer.status != "degraded" and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = client.get("/ready").json()
        assert ready["ready"] is True and ready["database"] == "degraded"
        assert ready["database_pending"] >= 1
        assert client.get("/predictions").status_code == 503
        proxy.up()
        assert writer.flush(15)
        stored = {r.id for r in direct.query(PredictionQuery(limit=100))[0]}
        assert stored == {first["id"], *ids}
        assert client.get("/ready").json()["database"] == "ok"
    finally:
        proxy.close()
        direct.drop()
        direct.dispose()


def test_fast_insert_stores_what_the_portable_path_stores(store) -> None:
    """SQLite and PostgreSQL rows go through the driver's executemany with each column's
    bind processor; they must read back, and sit in the table, exactly as SQLAlchemy's own
    insert leaves them (dates, JSON, booleans, bytes, NULLs)."""
    import sqlalchemy as sa

    assert store._fast is not None
    base = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    records = [_record(i, created=base + timedelta(seconds=i), unknown=i == 1,
                       label=None if i else "left", client=None if i == 2 else "k1",
                       thumbnail=None if i == 1 else b"\x89PNG\x00",
                       brightness=None if i == 2 else 12.5,
                       features=None if i == 1 else {"ref": "r", "z": [0.5, -1.0]})
               for i in range(3)]
    portable = PredictionStore(store.url, prefix=_prefix())
    assert portable._fast_insert() is not None  # it would take the fast path: force it not to
    portable._fast = None
    try:
        store.insert_many(records)
        store.insert_many(records)  # a retried batch: skipped, no error
        portable.insert_many(records)
        fast_rows = store.query(PredictionQuery(newest_first=False))[0]
        portable_rows = portable.query(PredictionQuery(newest_first=False))[0]
        assert [r.to_json(thumbnail=True) for r in fast_rows] == \
            [r.to_json(thumbnail=True) for r in portable_rows]
        assert fast_rows[0].to_json(thumbnail=True) == records[0].to_json(thumbnail=True)

        def raw(s: PredictionStore) -> list[tuple]:
            with s.engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(
                    f"SELECT * FROM {s.table.name} ORDER BY id"))]
        assert raw(store) == raw(portable)  # the same stored text/values, column by column
    finally:
        portable.drop()
        portable.dispose()


def test_prediction_ids_sort_by_time_and_do_not_repeat() -> None:
    from visiondeck.serve.history.store import new_prediction_id

    ids = []
    for _ in range(3):
        ids += [new_prediction_id() for _ in range(2000)]
        time.sleep(0.002)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    as_uuid = uuid.UUID(ids[0])
    assert as_uuid.version == 7 and as_uuid.variant == uuid.RFC_4122
    assert ids[0][:12] < ids[2000][:12] < ids[4000][:12]  # the millisecond prefix grows
    assert abs(int(ids[-1][:12], 16) / 1000 - time.time()) < 5


def test_two_workers_creating_the_tables_at_once_both_succeed(store) -> None:
    """`serve --workers 2` on a fresh database: the other worker creates the table between
    this one's existence check and its CREATE. Without the retry this raised "table already
    exists" (SQLite) or a duplicate-table error (PostgreSQL) and the writer queued rows."""
    import sqlalchemy as sa

    prefix = store.table.name.removesuffix("predictions")
    rival = PredictionStore(store.url, prefix=prefix)
    raced = []

    def other_worker_first(*_args, **_kwargs) -> None:
        if not raced:
            raced.append(True)
            rival.create()

    sa.event.listen(store.table, "before_create", other_worker_first)
    try:
        store.create()
    finally:
        rival.dispose()
    assert raced
    store.insert_many([_record(1)])
    assert store.query(PredictionQuery())[1] == 1
