"""The prediction history's database thread: journal → database, and the take-over.

`DurableHistoryWriter` (journal.py) answers the request side and runs the journal thread
(queue → journal, group commit); this is its other half, the thread that writes the
journal's oldest rows and labels to the database and trims them from the journal only once
the database has committed them, retrying with exponential backoff while it is away. It
also takes over the journals of dead writers (at start, with the old JSON-lines spool, and
every `SWEEP_S`): their rows join this writer's journal and go the same way.

It is a base class of the writer, not an object of its own: both threads share the
writer's journal, its locks and the ids it holds, and the lock order (`_jlock` before
`_lock`) must stay one rule. The state it reads and writes is declared below; all of it is
set by `DurableHistoryWriter.__init__`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from visiondeck.serve.history.journal_file import JournalFile, Row, decode_label, take_over
from visiondeck.serve.history.rejections import describe, isolate, row_fault, set_aside
from visiondeck.serve.history.store import PredictionStore

__all__ = ["SWEEP_S", "DatabaseSide", "JournalClosed"]

log = logging.getLogger("visiondeck.serve.history")

SWEEP_S = 30.0  # how often a running writer looks for journals of dead processes


class JournalClosed(Exception):
    """The writer closed its journal while the database thread was in a write."""


class DatabaseSide:
    """The database thread of `DurableHistoryWriter`: journal → database, take-overs."""

    # set by DurableHistoryWriter.__init__ (journal.py)
    store: PredictionStore
    journal_dir: Path | None
    batch_size: int
    retry_initial_s: float
    retry_max_s: float
    metrics: Any
    written: int
    failures: int
    replayed: int
    rejected: int
    healthy: bool
    pending: int  # a property of the writer: rows in memory and in the journal
    _lock: threading.Lock
    _jlock: threading.Lock
    _journal: JournalFile | None
    _labelled: set[str]
    _unsent: set[str]
    _db_wake: threading.Event
    _stopping: threading.Event
    _claimed: threading.Event
    _journal_done: threading.Event
    _close_deadline: float
    _failed_claims: set[Path]
    _db_error: str | None
    _gauge: Callable[..., None]

    def _database_loop(self) -> None:
        try:
            self._claim(legacy=True)
        except JournalClosed:
            return
        except Exception:  # never let a stranger's file stop this writer
            log.exception("history: taking over journals failed")
        finally:
            self._claimed.set()
        delay, next_sweep = self.retry_initial_s, time.monotonic() + SWEEP_S
        while True:
            try:
                wrote = self._write_rows() + self._write_labels()
            except JournalClosed:
                return
            except Exception as exc:
                self._database_failed(exc)
                if self._stopping.is_set():
                    return  # the rows are safe in the journal: do not wait for the database
                self._db_wake.wait(delay)
                self._db_wake.clear()
                delay = min(self.retry_max_s, delay * 2)
                continue
            delay = self.retry_initial_s
            if self._stopping.is_set():
                if time.monotonic() > self._close_deadline:
                    return
                if not wrote and self._journal_done.is_set():
                    return  # everything journaled is written
            if wrote:
                continue
            if time.monotonic() > next_sweep:
                try:
                    self._claim(legacy=False)
                except JournalClosed:
                    return
                except Exception:
                    log.exception("history: taking over journals failed")
                next_sweep = time.monotonic() + SWEEP_S
            self._db_wake.wait(1.0)
            self._db_wake.clear()

    def _write_rows(self) -> int:
        with self._jlock:
            batch = self._journal_or_raise().oldest(self.batch_size)
        if not batch:
            return 0
        records = [record for _, record in batch]
        try:
            self.store.insert_many(records)
        except Exception as exc:
            if len(records) == 1 or not row_fault(exc):
                raise
            self._reject(isolate(records, lambda record: self.store.insert_many([record])))
        with self._jlock:
            self._journal_or_raise().written_through(batch[-1][0], len(batch))
            with self._lock:
                self._unsent.difference_update(r.id for _, r in batch
                                               if r.id not in self._labelled)
        self.written += len(batch)
        self._database_ok()
        return len(batch)

    def _write_labels(self) -> int:
        with self._jlock:
            entries = self._journal_or_raise().ready_labels(self.batch_size)
        if not entries:
            return 0
        refused = isolate(entries, self._set_label)
        for record_id, label, after in entries:  # written, or refused for good
            with self._jlock:
                if self._journal_or_raise().delete_label(record_id, label, after):
                    self._labelled.discard(record_id)
                    with self._lock:
                        self._unsent.discard(record_id)
        self._reject(refused)
        self._database_ok()
        return len(entries)

    def _set_label(self, entry: tuple[str, str | None, int]) -> None:
        if not self.store.set_label(entry[0], *decode_label(entry[1])):
            log.warning("history: a label for %s found no row in the database", entry[0])

    def _reject(self, refused: list[tuple[Any, Exception]]) -> None:
        """Rows or labels the database refuses while it takes the others (a value it
        cannot store): out of the journal, so they stop blocking what follows, into
        `rejected.jsonl` beside it for an operator, logged and counted."""
        if not refused:
            return
        self.rejected += len(refused)
        set_aside(refused, self.journal_dir)

    def _journal_or_raise(self) -> JournalFile:
        if self._journal is None:
            raise JournalClosed
        return self._journal

    def _database_failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.healthy = False
        self._db_error = describe(exc)
        if self.metrics is not None:
            self.metrics.store_failures.inc()
        log.warning("prediction store write failed (%s); %d rows wait in the journal, "
                    "will retry", self._db_error, self.pending)
        self._gauge()

    def _database_ok(self) -> None:
        self.healthy, self._db_error = True, None
        self._gauge()

    # ------------------------------------------------------------------ taking over

    def _claim(self, *, legacy: bool) -> None:
        """Take over the journals of dead writers (and, at start, an old spool)."""
        own = self._journal
        if own is None:
            return
        take_over(own, self._take, legacy=legacy, failed=self._failed_claims)

    def _take(self, rows: Iterator[list[Row]], labels: list[tuple[str, str | None]],
              origin: str) -> None:
        taken = 0
        for chunk in rows:  # a commit per chunk: the journal thread gets its turns
            with self._jlock:
                journal = self._journal_or_raise()
                journal.append(chunk, {})
                with self._lock:
                    self._unsent.update(row[0] for row in chunk)
            taken += len(chunk)
        if labels:
            with self._jlock:  # a label this writer holds for the same row is newer
                self._journal_or_raise().append([], dict(labels), replace=False)
                self._labelled.update(record_id for record_id, _ in labels)
                with self._lock:
                    self._unsent.update(record_id for record_id, _ in labels)
        if taken or labels:
            self.replayed += taken
            log.info("history: %d rows and %d labels taken over from %s", taken, len(labels),
                     origin)
            self._db_wake.set()
