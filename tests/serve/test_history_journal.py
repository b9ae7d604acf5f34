"""The history writer's journal against real databases: outages, restarts, a killed writer,
journals of other processes, the old spool, a journal that cannot be written, the size cap.

"Down" is real in both databases: for SQLite the file's folder does not exist yet (SQLite
cannot open it: "unable to open database file"), for PostgreSQL a TCP proxy in front of it
cuts and refuses connections (tests/serve/proxy.py). Waits poll the writer's counters;
nothing asserts how long anything took.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serve.proxy import OutageProxy
from tests.serve.test_store import PG_URL, make_record, require_postgres, unique_prefix
from visiondeck.serve.history.journal import DurableHistoryWriter
from visiondeck.serve.history.store import PredictionQuery, PredictionStore
from visiondeck.serve.metrics import ServeMetrics


@dataclass
class Outage:
    """A database the test can take away and give back; `reader` reads it directly."""

    url: str
    prefix: str
    down: Callable[[], None]
    up: Callable[[], None]
    reader: PredictionStore

    def store(self) -> PredictionStore:
        return PredictionStore(self.url, prefix=self.prefix, connect_timeout=1)

    def ids(self) -> set[str]:
        return {r.id for r in self.reader.iter_records(PredictionQuery())}


@pytest.fixture(params=["sqlite", "postgresql"])
def outage(request, tmp_path) -> Iterator[Outage]:
    """Starts down."""
    prefix = unique_prefix()
    if request.param == "sqlite":
        folder = tmp_path / "database"
        url = f"sqlite:///{folder / 'history.db'}"
        reader = PredictionStore(url, prefix=prefix)
        yield Outage(url, prefix, lambda: None, lambda: folder.mkdir(exist_ok=True), reader)
        reader.dispose()
        return
    require_postgres()
    proxy = OutageProxy(("127.0.0.1", 5432))
    proxy.down()
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
    reader = PredictionStore(PG_URL, prefix=prefix)
    try:
        yield Outage(url, prefix, proxy.down, proxy.up, reader)
    finally:
        proxy.close()
        reader.drop()
        reader.dispose()


def _writer(store: PredictionStore, journal: Path, **options) -> DurableHistoryWriter:
    options = {"retry_initial_s": 0.05, "retry_max_s": 0.2, **options}
    writer = DurableHistoryWriter(store, journal, **options)
    writer.start()
    return writer


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _on_disk(journal: Path) -> dict[str, str | None]:
    """id → label of the rows in every journal file, read by a connection of our own."""
    rows: dict[str, str | None] = {}
    for path in sorted(journal.glob("*.db")):
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows.update(conn.execute("SELECT id, label FROM rows").fetchall())
    return rows


def test_an_outage_through_two_restarts_loses_nothing(outage: Outage, tmp_path) -> None:
    """Rows answered while the database is away survive a stop, a start that cannot write
    them either (the old writer deleted its spool as it loaded it), and arrive once it is
    back, with a label sent meanwhile."""
    journal = tmp_path / "journal"
    records = [make_record(i) for i in range(20)]
    store = outage.store()
    first = _writer(store, journal)
    for record in records:
        first.submit(record)
    _until(lambda: first.journaled == 20, "20 journaled rows")
    assert first.update_pending(records[3].id, "right") is True  # journaled, not yet stored
    assert first.update_pending(uuid.uuid4().hex, "x") is False  # nothing of that id
    _until(lambda: first.failures > 0, "a failed database write")
    assert first.status == "degraded" and first.last_error is not None
    assert first.close(flush_timeout_s=1) == 20
    assert set(_on_disk(journal)) == {r.id for r in records}

    second = _writer(store, journal)  # the database is still away
    _until(lambda: second.replayed == 20, "the first journal taken over")
    assert set(_on_disk(journal)) == {r.id for r in records}  # on disk while it runs
    assert len(list(journal.glob("*.db"))) == 1  # the first journal's files are gone
    assert second.close(flush_timeout_s=1) == 20

    outage.up()
    third = _writer(store, journal)
    assert third.flush(30)
    assert third.close() == 0
    store.dispose()
    assert outage.ids() == {r.id for r in records}
    assert outage.reader.get(records[3].id).label == "right"
    assert outage.reader.get(records[0].id).thumbnail == b"\x89PNG"
    assert list(journal.iterdir()) == []  # an empty journal is removed at close


def test_rows_reach_the_journal_while_a_database_write_hangs(tmp_path) -> None:
    """The group commit runs on its own thread: rows answered while the database thread
    is stuck in a write are on disk anyway."""
    store = _HangingStore(f"sqlite:///{tmp_path / 'history.db'}")
    writer = _writer(store, tmp_path / "journal", commit_interval_s=0.01)
    first = [make_record(i) for i in range(3)]
    for record in first:
        writer.submit(record)
    assert store.entered.wait(30)  # the database thread is inside insert_many now
    later = [make_record(i) for i in range(3, 8)]
    for record in later:
        writer.submit(record)
    _until(lambda: writer.journaled == 8, "8 journaled rows")
    assert set(_on_disk(tmp_path / "journal")) == {r.id for r in first + later}
    store.release.set()
    assert writer.flush(30)
    writer.close()
    assert {r.id for r in store.iter_records(PredictionQuery())} == \
        {r.id for r in first + later}
    store.dispose()


class _HangingStore(PredictionStore):
    """A real SQLite store whose first insert waits until the test releases it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered, self.release = threading.Event(), threading.Event()

    def insert_many(self, records) -> None:
        self.entered.set()
        assert self.release.wait(30)
        super().insert_many(records)


_KILLED_WRITER = """
import os, signal, sqlite3, sys, time
from pathlib import Path
from tests.serve.test_store import make_record
from visiondeck.serve.history.journal import DurableHistoryWriter
from visiondeck.serve.history.store import PredictionStore

writer = DurableHistoryWriter(PredictionStore(sys.argv[1]), Path(sys.argv[2]),
                              retry_initial_s=0.05, retry_max_s=0.2)
writer.start()
records = [make_record(i) for i in range(20)]
for record in records:
    writer.submit(record)
    print(record.id, flush=True)
while writer.journaled < 20:
    time.sleep(0.01)
assert writer.update_pending(records[0].id, "left")
own = next(Path(sys.argv[2]).glob("*.db"))
while not sqlite3.connect(own).execute("SELECT count(*) FROM labels").fetchone()[0]:
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_journal_of_a_killed_writer_is_replayed(tmp_path) -> None:
    folder = tmp_path / "database"
    url = f"sqlite:///{folder / 'history.db'}"
    journal = tmp_path / "journal"
    killed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, url, str(journal)],
                            capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parents[2])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ids = killed.stdout.split()
    assert len(ids) == 20 and len(_on_disk(journal)) == 20
    folder.mkdir()
    store = PredictionStore(url)
    writer = _writer(store, journal)
    assert writer.flush(30)
    assert writer.replayed == 20
    writer.close()
    assert {r.id for r in store.iter_records(PredictionQuery())} == set(ids)
    assert store.get(ids[0]).label == "left"
    assert list(journal.iterdir()) == []
    store.dispose()


def test_a_live_writers_journal_is_left_alone(tmp_path) -> None:
    journal = tmp_path / "journal"
    away = PredictionStore(f"sqlite:///{tmp_path / 'missing' / 'a.db'}")
    alive = _writer(away, journal)
    records = [make_record(i) for i in range(5)]
    for record in records:
        alive.submit(record)
    _until(lambda: alive.journaled == 5, "5 journaled rows")
    other_store = PredictionStore(f"sqlite:///{tmp_path / 'b.db'}")
    other = _writer(other_store, journal)
    assert other.flush(30)
    assert other.replayed == 0 and other_store.query(PredictionQuery())[1] == 0
    assert other.close() == 0
    assert set(_on_disk(journal)) == {r.id for r in records}
    (tmp_path / "missing").mkdir()
    assert alive.flush(30)
    assert alive.close() == 0
    assert {r.id for r in away.iter_records(PredictionQuery())} == {r.id for r in records}
    away.dispose()
    other_store.dispose()


def test_each_orphaned_journal_is_taken_over_by_one_writer(tmp_path) -> None:
    """Four journals left behind; two writers start together on the same folder (two
    workers): every journal goes to exactly one of them (the flock is the claim)."""
    journal = tmp_path / "journal"
    away = PredictionStore(f"sqlite:///{tmp_path / 'missing' / 'h.db'}")
    ids = set()
    left = [_writer(away, journal) for _ in range(4)]  # alive together: none takes another's
    for n, writer in enumerate(left):
        for i in range(5):
            record = make_record(10 * n + i)
            ids.add(record.id)
            writer.submit(record)
    for writer in left:
        _until(lambda w=writer: w.journaled == 5, "5 journaled rows")
    assert [w.close(flush_timeout_s=0.5) for w in left] == [5] * 4
    assert len(list(journal.glob("*.db"))) == 4
    away.dispose()
    store = PredictionStore(f"sqlite:///{tmp_path / 'h.db'}")
    writers = [DurableHistoryWriter(store, journal) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        assert writer.flush(30)
    assert sum(w.replayed for w in writers) == 20  # no journal taken twice
    for writer in writers:
        assert writer.close() == 0
    assert {r.id for r in store.iter_records(PredictionQuery())} == ids
    assert list(journal.iterdir()) == []
    store.dispose()


def _spool_line(record) -> str:
    return json.dumps(record.to_json(thumbnail=True)) + "\n"


def test_the_old_spool_and_its_replay_files_are_taken_over_once(tmp_path, caplog) -> None:
    """The JSON-lines spool of earlier versions: `prediction_spool.jsonl` with a torn last
    line, and a `.replay` file a stopped worker had claimed (the old writer never replayed
    those). They move into the journal at start (so a database that is still away loses
    nothing) and are gone."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    spooled = [make_record(i) for i in range(3)]
    claimed = [make_record(i) for i in range(3, 5)]
    (data_dir / "prediction_spool.jsonl").write_text(
        "".join(_spool_line(r) for r in spooled) + _spool_line(make_record(9))[:40])
    (data_dir / "prediction_spool.4242.replay").write_text(
        _spool_line(claimed[0]) + "not json\n" + _spool_line(claimed[1]))
    journal = data_dir / "history-journal"
    away = PredictionStore(f"sqlite:///{tmp_path / 'missing' / 'h.db'}")
    with caplog.at_level(logging.WARNING, logger="visiondeck.serve.history"):
        first = _writer(away, journal)
        _until(lambda: first.replayed == 5, "5 spooled rows taken over")
    assert sorted(p.name for p in data_dir.iterdir()) == ["history-journal"]
    assert set(_on_disk(journal)) == {r.id for r in spooled + claimed}
    assert sum("unreadable line" in m for m in caplog.messages) == 2
    assert first.close(flush_timeout_s=0.5) == 5

    store = PredictionStore(f"sqlite:///{tmp_path / 'h.db'}")
    second = _writer(store, journal)
    assert second.flush(30)
    second.close()
    stored = {r.id: r for r in store.iter_records(PredictionQuery())}
    assert set(stored) == {r.id for r in spooled + claimed}
    assert store.get(spooled[0].id).thumbnail == b"\x89PNG"
    assert stored[claimed[1].id].top_k == claimed[1].top_k
    assert list(journal.iterdir()) == []
    store.dispose()
    away.dispose()


def test_rows_wait_in_memory_while_the_journal_is_full_and_overflow_is_counted(tmp_path
                                                                                ) -> None:
    """A journal that cannot be written (its disk full: SQLite's max_page_count makes it
    SQLITE_FULL) keeps rows in memory; past max_pending the oldest are dropped, logged and
    counted on /metrics, the only loss there is. Once it can be written, the rest go on."""
    metrics = ServeMetrics()
    store = PredictionStore(f"sqlite:///{tmp_path / 'h.db'}")
    writer = _writer(store, tmp_path / "journal", max_pending=5, metrics=metrics)
    with writer._jlock:  # the disk fills up
        conn = writer._journal.conn
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    records = [make_record(i, thumbnail=os.urandom(16384)) for i in range(8)]
    for record in records:
        writer.submit(record)
    _until(lambda: writer.dropped == 3, "3 dropped rows")
    assert writer.status == "degraded" and "journal write failed" in writer.last_error
    assert "visiondeck_history_rows_dropped_total 3.0" in metrics.render().decode()
    with writer._jlock:  # space again
        writer._journal.conn.execute("PRAGMA max_page_count = 1073741823")
    assert writer.flush(30)
    assert writer.status == "ok"
    writer.close()
    assert {r.id for r in store.iter_records(PredictionQuery())} == \
        {r.id for r in records[3:]}
    store.dispose()


def test_a_journal_over_its_cap_is_reported_and_keeps_every_row(tmp_path, caplog) -> None:
    metrics = ServeMetrics()
    folder = tmp_path / "database"
    store = PredictionStore(f"sqlite:///{folder / 'h.db'}")
    with caplog.at_level(logging.ERROR, logger="visiondeck.serve.history"):
        writer = _writer(store, tmp_path / "journal", max_journal_bytes=64 * 1024,
                         metrics=metrics)
        records = [make_record(i, thumbnail=os.urandom(40_000)) for i in range(3)]
        for record in records:
            writer.submit(record)
        _until(lambda: writer.journaled == 3, "3 journaled rows")
        _until(lambda: writer._over_cap, "the cap alarm")
    assert writer.status == "degraded" and "over its cap" in writer.last_error
    assert sum("over its cap" in m for m in caplog.messages) == 1  # once, not every commit
    assert "visiondeck_history_journal_over_cap 1.0" in metrics.render().decode()
    folder.mkdir()
    assert writer.flush(30)
    writer.submit(make_record(4))  # the next commit finds the journal small again
    assert writer.flush(30)
    assert writer.status == "ok" and writer.last_error is None
    writer.close()
    assert store.query(PredictionQuery())[1] == 4
    store.dispose()


def test_labels_wait_for_their_rows_and_the_newest_wins(outage: Outage, tmp_path) -> None:
    store = outage.store()
    writer = _writer(store, tmp_path / "journal")
    record = make_record(1)
    writer.submit(record)
    assert writer.annotate(record.id, brightness=7.5) is True  # still in memory
    _until(lambda: writer.journaled == 1, "a journaled row")
    assert writer.annotate(record.id, brightness=9.0) is False  # journaled: too late
    assert writer.update_pending(record.id, "left") is True
    assert writer.update_pending(record.id, "right") is True
    _until(lambda: writer.failures > 0, "a failed database write")
    outage.up()
    assert writer.flush(30)
    # once its row and label are stored, a label goes straight to the database
    assert writer.update_pending(record.id, "middle") is False
    writer.close()
    stored = outage.reader.get(record.id)
    assert stored.label == "right" and stored.brightness == 7.5
    store.dispose()


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_go_on(tmp_path) -> None:
    """A value PostgreSQL refuses for good (too long for its column) would fail its batch on
    every retry and hold every later row back: it is written alone, set aside in
    rejected.jsonl, counted, and the others are stored."""
    require_postgres()
    store = PredictionStore(PG_URL, prefix=unique_prefix())
    metrics = ServeMetrics()
    writer = DurableHistoryWriter(store, tmp_path / "journal", metrics=metrics)
    bad = make_record(2, model_version="v" * 100)  # the column is VARCHAR(64)
    good = [make_record(i) for i in (1, 3, 4)]
    for record in (good[0], bad, *good[1:]):  # queued before start: one batch
        writer.submit(record)
    writer.start()
    try:
        assert writer.flush(30)
        assert writer.status == "ok" and writer.rejected == 1
        assert {r.id for r in store.iter_records(PredictionQuery())} == {r.id for r in good}
        kept = [json.loads(line) for line in
                (tmp_path / "journal" / "rejected.jsonl").read_text().splitlines()]
        assert [(k["id"], k["model_version"]) for k in kept] == [(bad.id, bad.model_version)]
        assert "DataError" in kept[0]["error"]
        assert "visiondeck_history_rows_rejected_total 1.0" in metrics.render().decode()
    finally:
        writer.close()
        store.drop()
        store.dispose()


def test_journal_files_are_private(tmp_path) -> None:
    old_umask = os.umask(0o022)
    try:
        store = PredictionStore(f"sqlite:///{tmp_path / 'missing' / 'h.db'}")
        writer = _writer(store, tmp_path / "journal")
        writer.submit(make_record(1))
        _until(lambda: writer.journaled == 1, "a journaled row")
    finally:
        os.umask(old_umask)
    journal = tmp_path / "journal"
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    files = list(journal.iterdir())
    assert {p.suffix for p in files} >= {".db", ".lock"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), files
    writer.close(flush_timeout_s=0.5)
    store.dispose()
