"""The history writer's journal on disk: one SQLite file per writer, and the take-over of
the files of writers that are gone.

Kept apart from the writer (journal.py) because it is a file format and a locking protocol,
not threads: what a journal holds, how a live writer says it is alive, and how another
writer takes a dead one's rows without ever taking them twice.

The journal is a SQLite file (stdlib sqlite3) rather than JSON lines: each group commit is
atomic, so there is no torn tail to parse, and deleting written rows is a `DELETE`, not a
rewrite. WAL with `synchronous=FULL` fsyncs once per commit: the guarantee covers power
loss, not only a killed process (NORMAL would lose the last commits to a power cut), and
costs one fsync per group (at most ten a second), not one per prediction. The files are
0600 in a 0700 folder: they hold what the history holds.

One journal per writer, so `--workers N` and replicas can share a data dir:
`<journal_dir>/<pid>-<random>.db`, beside a `.lock` file the writer holds an `flock` on for
its whole life (created under a temporary name and renamed once locked, so no other writer
sees it unlocked). A journal whose lock can be taken belongs to nobody: a process that
was killed, or one that stopped with the database away. `take_over` claims such journals
(the non-blocking flock is the atomic claim: two writers never take the same one), hands
their rows to the claiming writer, which commits them into its own journal, and only then
deletes them. The prediction spool of earlier versions (`prediction_spool.jsonl` and its
`.replay` files in the data dir) is taken over the same way, once, torn lines skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from visiondeck.serve.history.store import PredictionRecord

__all__ = ["LEGACY_SPOOL", "JournalFile", "Row", "Take", "decode_label", "encode_label",
           "encode_row", "take_over", "to_plain"]

log = logging.getLogger("visiondeck.serve.history")

LEGACY_SPOOL = "prediction_spool"  # <data dir>/prediction_spool.jsonl, .<pid>.replay (old)
_FORMAT = 2  # PRAGMA user_version of the journal files (2: labels as `encode_label` text)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, label TEXT, data TEXT NOT NULL, thumbnail BLOB);
CREATE TABLE IF NOT EXISTS labels (id TEXT PRIMARY KEY, label TEXT, after_seq INTEGER NOT NULL);
"""
_DATA = tuple(f.name for f in fields(PredictionRecord) if f.name not in ("id", "label",
                                                                          "thumbnail"))
Row = tuple[str, str | None, str, bytes | None]  # (id, label, data, thumbnail) as journaled
_RECENT = 2048  # journaled rows kept in memory too, so the database thread need not decode
_JSON = json.JSONEncoder(separators=(",", ":"), default=lambda value: to_plain(value)).encode

#: what a writer does with rows and labels taken over: (row chunks, labels, where from)
Take = Callable[[Iterator[list[Row]], list[tuple[str, str | None]], str], None]


class JournalFile:
    """One writer's journal file (or an in-memory one), with the flock that says it's alive."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None, lock_fd: int | None,
                 lock_path: Path | None) -> None:
        self.conn, self.path, self.lock_fd, self.lock_path = conn, path, lock_fd, lock_path
        self._recent: dict[int, PredictionRecord] = {}  # seq → the journaled object
        # rows through `done` are in the database; they are deleted with the next commit
        # (one transaction instead of two; a crash before it only rewrites them, skipped)
        self.done = self._deleted = 0
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version = {_FORMAT}")
        self.rows = conn.execute("SELECT count(*) FROM rows").fetchone()[0]

    @classmethod
    def create(cls, directory: Path | None) -> JournalFile:
        if directory is None:
            return cls(sqlite3.connect(":memory:", isolation_level=None,
                                       check_same_thread=False), None, None, None)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        lock_path, path = directory / f"{name}.lock", directory / f"{name}.db"
        temporary = directory / f".{name}.lock.tmp"  # never matched by a claimer's glob
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temporary, lock_path)  # visible to claimers only once it is locked
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # one fsync per group commit
            conn.execute("PRAGMA journal_size_limit=8388608")
            return cls(conn, path, fd, lock_path)
        except BaseException:
            os.close(fd)
            for leftover in (temporary, lock_path):
                leftover.unlink(missing_ok=True)
            _remove_journal(path)
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite ends some failed ones itself (a full disk)
                self.conn.execute("ROLLBACK")
            raise

    def append(self, rows: list[Row], labels: dict[str, str | None], *,
               records: list[PredictionRecord] | None = None, replace: bool = True) -> None:
        """Journal rows and labels in one transaction. `records`, the rows' own objects
        (never changed once journaled), are kept to be written without decoding them back."""
        done = self.done
        with self._transaction() as conn:
            if done > self._deleted:
                conn.execute("DELETE FROM rows WHERE seq <= ?", (done,))
            added = conn.executemany("INSERT OR IGNORE INTO rows (id, label, data, thumbnail) "
                                     "VALUES (?, ?, ?, ?)", rows).rowcount if rows else 0
            last = conn.execute("SELECT coalesce(max(seq), 0) FROM rows").fetchone()[0]
            if labels:  # written after every row journaled so far (and any in flight)
                conn.executemany(f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO labels "
                                 "VALUES (?, ?, ?)",
                                 [(i, label, last) for i, label in labels.items()])
        self.rows += max(0, added)
        self._deleted = done
        if records and added == len(records) and len(self._recent) < _RECENT:
            self._recent.update(zip(range(last - added + 1, last + 1), records, strict=True))

    def oldest(self, limit: int) -> list[tuple[int, PredictionRecord]]:
        """The oldest rows not yet in the database, in journal order."""
        seqs = [seq for (seq,) in self.conn.execute(
            "SELECT seq FROM rows WHERE seq > ? ORDER BY seq LIMIT ?", (self.done, limit))]
        if all(seq in self._recent for seq in seqs):  # the usual case: no decoding
            return [(seq, self._recent[seq]) for seq in seqs]
        cursor = self.conn.execute("SELECT seq, id, label, data, thumbnail FROM rows "
                                   "WHERE seq > ? ORDER BY seq LIMIT ?", (self.done, limit))
        return [(seq, _decode(*row)) for seq, *row in cursor]

    def written_through(self, seq: int, count: int) -> None:
        """The `count` oldest rows, through `seq`, are in the database."""
        self.done = seq
        self.rows -= count
        for key in [key for key in self._recent if key <= seq]:
            del self._recent[key]

    def tidy(self) -> None:
        """Delete the rows the database has now rather than with the next commit."""
        if self.done > self._deleted:
            self.append([], {})

    def ready_labels(self, limit: int) -> list[tuple[str, str | None, int]]:
        """Labels every row before which has been written (so their row is in the database)."""
        return list(self.conn.execute(
            "SELECT id, label, after_seq FROM labels WHERE after_seq < coalesce((SELECT "
            "min(seq) FROM rows WHERE seq > ?), 9223372036854775807) LIMIT ?",
            (self.done, limit)))

    def delete_label(self, record_id: str, label: str | None, after: int) -> bool:
        """Delete a written label unless a newer one replaced it meanwhile."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM labels WHERE id = ? AND label IS ? AND "
                                "after_seq = ?", (record_id, label, after)).rowcount == 1

    def label_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM labels").fetchone()[0]

    def used_bytes(self) -> int:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self.conn.execute("PRAGMA page_size").fetchone()[0]

    def close(self, *, remove: bool) -> None:
        if not remove:
            with contextlib.suppress(sqlite3.Error):  # a written row left is only rewritten
                self.tidy()
        self.conn.close()
        if self.path is not None and remove:
            _remove_journal(self.path)
        if self.lock_path is not None and remove:
            self.lock_path.unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock: a left journal is now claimable


@contextlib.contextmanager
def _claim_lock(lock_path: Path) -> Iterator[Path | None]:
    """The journal beside `lock_path` when its lock could be taken (its writer is gone),
    held until the block ends; None when a live writer holds it or it is already gone."""
    try:
        fd = os.open(lock_path, os.O_RDWR)  # never O_CREAT: a vanished lock stays vanished
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        if os.fstat(fd).st_nlink == 0:  # its claimer removed it while we waited
            yield None
            return
        yield lock_path.with_suffix(".db")
    finally:
        os.close(fd)


def take_over(own: JournalFile, take: Take, *, legacy: bool, failed: set[Path]) -> None:
    """Hand `take` the rows and labels of every journal beside `own` whose writer is gone
    (and, with `legacy`, of an old spool); each source is deleted only once `take` has
    returned (its rows are then in `own`). A journal that cannot be taken (another user's,
    a newer format...) is added to `failed`, left in place and not tried again."""
    if own.path is None:
        return
    directory = own.path.parent
    sources: Iterable[Path] = ()
    if legacy:
        data_dir = directory.parent
        sources = [data_dir / f"{LEGACY_SPOOL}.jsonl",
                   *sorted(data_dir.glob(f"{LEGACY_SPOOL}.*.replay")),
                   *sorted(directory.glob("*.spool.jsonl"))]
    for n, path in enumerate(sources):
        claimed = own.path.with_suffix(f".{n}.spool.jsonl")
        try:
            os.replace(path, claimed)  # atomic: one writer takes each file
            with claimed.open("rb") as handle:
                take(_read_spool(handle, path), [], str(path))
            claimed.unlink(missing_ok=True)
        except FileNotFoundError:
            continue
        except (OSError, sqlite3.Error) as exc:  # the file stays for the next start
            log.error("history: cannot take over the old spool %s (%s)", path, exc)
    for lock_path in sorted(directory.glob("*.lock")):
        if lock_path == own.lock_path or lock_path in failed:
            continue
        try:
            with _claim_lock(lock_path) as claimed_journal:
                if claimed_journal is None:
                    continue
                if claimed_journal.exists():
                    _take_journal(claimed_journal, take)
                _remove_journal(claimed_journal)  # only once its rows are in ours
                lock_path.unlink()  # last, while still holding it
        except (OSError, sqlite3.Error) as exc:  # another user's, a newer format...
            failed.add(lock_path)
            log.error("history: cannot take over the journal beside %s (%s); it is "
                      "left in place", lock_path, exc)


def _take_journal(path: Path, take: Take) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as source:
        version = source.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, _FORMAT):
            raise sqlite3.DatabaseError(f"journal format {version} is newer than this "
                                        f"VisionDeck's ({_FORMAT})")
        source.executescript(_SCHEMA)  # a journal killed before its schema: empty
        labels = list(source.execute("SELECT id, label FROM labels"))
        if version < 2:  # format 1 journaled a label as its plain text
            labels = [(record_id, encode_label(label)) for record_id, label in labels]
        take(_journal_rows(source), labels, str(path))


def _remove_journal(path: Path) -> None:
    for suffix in ("-wal", "-shm", ""):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _journal_rows(source: sqlite3.Connection, chunk: int = 512) -> Iterator[list[Row]]:
    last = 0
    while rows := source.execute("SELECT seq, id, label, data, thumbnail FROM rows "
                                 "WHERE seq > ? ORDER BY seq LIMIT ?", (last, chunk)).fetchall():
        last = rows[-1][0]
        yield [tuple(row[1:]) for row in rows]


def _read_spool(handle: BinaryIO, name: Path, chunk: int = 512) -> Iterator[list[Row]]:
    """The JSON-lines spool of earlier versions; a torn line (a crash mid-write) is skipped."""
    rows: list[Row] = []
    for line in handle:
        try:
            rows.append(encode_row(PredictionRecord.from_json(json.loads(line))))
        except Exception:
            log.warning("history: skipping an unreadable line of the old spool %s", name)
            continue
        if len(rows) == chunk:
            yield rows
            rows = []
    if rows:
        yield rows


def encode_label(label: str | None, labels: list[str] | None = None) -> str | None:
    """A late label as the journal's labels table holds it: the true label's text and, for a
    multi-label row, the true set, as one JSON text (None clears both)."""
    if label is None and labels is None:
        return None
    return json.dumps({"label": label, "labels": labels}, separators=(",", ":"))


def decode_label(text: str | None) -> tuple[str | None, list[str] | None]:
    """Inverse of `encode_label`: (label, labels)."""
    if text is None:
        return None, None
    value = json.loads(text)
    return value["label"], value["labels"]


def encode_row(record: PredictionRecord) -> Row:
    """A row as journaled: shallow (no deep copy of top-k), numpy scalars made plain."""
    data = {name: getattr(record, name) for name in _DATA}
    data["created_at"] = record.created_at.isoformat()
    return record.id, record.label, _JSON(data), record.thumbnail


def _decode(record_id: str, label: str | None, data: str, thumbnail: bytes | None
            ) -> PredictionRecord:
    values = {k: v for k, v in json.loads(data).items() if k in _DATA}  # a newer field: drop
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    return PredictionRecord(id=record_id, label=label, thumbnail=thumbnail, **values)


def to_plain(value: Any) -> Any:
    """A value JSON cannot encode as itself: numpy's as Python's, anything else as text."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)

