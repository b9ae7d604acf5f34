"""Prediction history: SQLite and PostgreSQL, filters, export, and database outages.

The writer's journal, its restarts and its take-overs are tested in test_history_journal.py
(in process) and test_history_durability.py (real servers killed with SIGKILL).
"""

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
from visiondeck.serve.history.store import (
    PredictionQuery,
    PredictionRecord,
    PredictionStore,
    to_csv,
)

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def require_postgres() -> None:
    """Fail (never skip) when the machine's PostgreSQL does not answer."""
    import psycopg

    try:
        psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                        connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not usable ({exc}); start it with "
                    "scripts/start-services.sh", pytrace=False)


def unique_prefix() -> str:
    return f"vdtest_{uuid.uuid4().hex[:10]}_"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[PredictionStore]:
    if request.param == "postgresql":
        require_postgres()
    url = f"sqlite:///{tmp_path / 'p.db'}" if request.param == "sqlite" else PG_URL
    store = PredictionStore(url, prefix=unique_prefix())
    yield store
    store.drop()
    store.dispose()


def make_record(i: int, *, predicted: str = "left", confidence: float = 0.9,
                created: datetime | None = None, **changes) -> PredictionRecord:
    values = dict(
        id=uuid.uuid4().hex, created_at=created or datetime.now(UTC), model_name="m",
        model_version="v1", predicted=predicted, confidence=confidence, unknown=False,
        top_k=[{"class": predicted, "probability": confidence}], latency_ms=1.5,
        image_sha256=f"{i:064x}", image_width=16, image_height=16, thumbnail=b"\x89PNG")
    values.update(changes)
    return PredictionRecord(**values)


def older_table(url: str, prefix: str, records: list[PredictionRecord],
                dropped: tuple[str, ...]) -> None:
    """A history table as an older VisionDeck left it: `records` in it, and without the
    `dropped` columns a later release added (the next `create()` must add them back)."""
    import sqlalchemy as sa

    old = PredictionStore(url, prefix=prefix)
    old.insert_many(records)
    quote = old.engine.dialect.identifier_preparer.quote
    with old.engine.begin() as conn:
        for column in dropped:
            conn.execute(sa.text(f"ALTER TABLE {quote(old.table.name)} DROP COLUMN {column}"))
    old.dispose()


def test_store_round_trip_filters_and_paging(store) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    records = [make_record(i, predicted=["left", "right"][i % 2], confidence=0.5 + i / 40,
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


def test_label_for_a_row_not_written_yet_asks_to_retry(make_client) -> None:
    """Another worker answered it (its token is valid here: the secret is shared) but has
    not written its row: 409 with Retry-After, not a 404 that tells the client to give up.
    Without a valid token a missing row stays a 404."""
    from visiondeck.serve.history.store import new_prediction_id

    client = make_client()
    services = client.app.state.services
    elsewhere = new_prediction_id()  # issued, as far as the token can tell, but not stored
    answer = client.put(f"/predictions/{elsewhere}/label",
                        json={"label": "left", "token": services.label_token(elsewhere)})
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == "not_recorded_yet"
    assert answer.headers["retry-after"] == "1"
    unknown = client.put(f"/predictions/{new_prediction_id()}/label",
                         json={"label": "left", "token": "0" * 32})
    assert unknown.status_code == 401


def test_postgres_outage_never_fails_predictions(make_client) -> None:
    require_postgres()
    proxy = OutageProxy(("127.0.0.1", 5432))
    prefix = unique_prefix()
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
    records = [make_record(i, created=base + timedelta(seconds=i), unknown=i == 1,
                           label=None if i else "left", client=None if i == 2 else "k1",
                           thumbnail=None if i == 1 else b"\x89PNG\x00",
                           brightness=None if i == 2 else 12.5,
                           features=None if i == 1 else {"ref": "r", "z": [0.5, -1.0]})
               for i in range(3)]
    portable = PredictionStore(store.url, prefix=unique_prefix())
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


def test_a_nul_character_cannot_make_a_row_unstorable(store) -> None:
    """PostgreSQL refuses NUL in text: a client's label `a\\x00b` failed its whole batch
    on every retry. Both databases store U+FFFD in its place."""
    record = make_record(1, label="a\x00b", client="k\x00")
    store.insert_many([record])
    stored = store.get(record.id)
    assert (stored.label, stored.client) == ("a\ufffdb", "k\ufffd")
    assert store.set_label(record.id, "\x00c")
    assert store.get(record.id).label == "\ufffdc"


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
    store.insert_many([make_record(1)])
    assert store.query(PredictionQuery())[1] == 1


def test_csv_export_neutralises_formulas_in_every_text_cell() -> None:
    """A label, class, client or model name a spreadsheet would evaluate (`=HYPERLINK(...)`,
    `@SUM(...)`, a leading tab or CR) is exported with a leading quote; numbers, booleans and
    harmless text are exported as they are."""
    hostile = make_record(1, predicted="+cmd|' /C calc'!A0", label='=HYPERLINK("http://x","y")',
                          client="@SUM(1+1)", endpoint="-2+3", model_name="\tm",
                          model_version="\r=1", confidence=0.25, latency_ms=-1.5)
    plain = make_record(2, label="cat", client="k1")
    rows = list(csv.DictReader(io.StringIO(to_csv([hostile, plain]))))
    for column in ("label", "predicted", "client", "endpoint", "model_name", "model_version"):
        assert rows[0][column] == "'" + getattr(hostile, column), column
    assert rows[0]["confidence"] == "0.25" and rows[0]["latency_ms"] == "-1.5"
    assert rows[0]["unknown"] == "False" and rows[0]["image_width"] == "16"
    assert rows[0]["top_k"].startswith("[")  # JSON: starts with a bracket, left alone
    assert rows[1]["label"] == "cat" and rows[1]["client"] == "k1"
    assert rows[1]["id"] == plain.id and rows[1]["created_at"][:4].isdigit()


def test_csv_export_of_the_endpoint_neutralises_a_label(make_client) -> None:
    client = make_client()
    body = client.post("/predict", files={"file": learnable_png("left")},
                       data={"label": "=1+1"}).json()
    assert client.app.state.services.writer.flush(10)
    rows = list(csv.DictReader(io.StringIO(client.get("/predictions?format=csv").text)))
    assert [(row["id"], row["label"]) for row in rows] == [(body["id"], "'=1+1")]


def test_the_sqlite_file_is_private(tmp_path) -> None:
    """The history holds every client's predictions and labels: mode 0600, like the key
    file, whatever the umask; an older file left 0644 is narrowed when opened."""
    import os
    import stat

    old_umask = os.umask(0o022)
    try:
        store = PredictionStore(f"sqlite:///{tmp_path / 'new.db'}", prefix=unique_prefix())
        store.insert_many([make_record(1)])
        older = tmp_path / "old.db"
        older.touch(mode=0o644)
        (tmp_path / "old.db-wal").touch(mode=0o644)
        again = PredictionStore(f"sqlite:///{older}")
        assert again.query(PredictionQuery())[1] == 0
    finally:
        os.umask(old_umask)
    for name in ("new.db", "new.db-wal", "new.db-shm", "old.db", "old.db-wal"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    store.dispose()
    again.dispose()
