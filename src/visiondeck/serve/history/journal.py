"""The prediction history's write path: an in-memory queue, a local journal, the database.

A prediction is answered first; `DurableHistoryWriter.submit` only appends its row to an
in-memory queue (the request path never touches a disk or the database). Two threads
take it from there:

- the *journal thread* wakes every `commit_interval_s` (0.1 s), runs the drift monitor's
  `before_write` hooks and commits everything queued to the process's journal in one
  transaction (group commit). An answered prediction is on disk within about 0.1 s plus
  one commit, whatever the database is doing: this thread never waits for it.
- the *database thread* writes the journal's oldest rows to the database; only once the
  database has committed them are they deleted from the journal (with the next group
  commit: one transaction, not two). A failed write is retried with exponential backoff
  (`/ready` says "degraded"); the rows stay in the journal meanwhile. Rows carry their id
  and the store skips ids it has, so a row written twice (a crash between the database
  commit and the journal delete) is stored once.

The journal itself - one SQLite file per writer, its flock, and the take-over of journals
left by dead processes (at start and every `SWEEP_S`) and of the old JSON-lines spool - is
journal_file.py; telling a refused row from a database that is away is rejections.py; the
database thread and the take-over are journal_database.py. This module is the request side,
the journal thread and the lifecycle that ties both threads together.

Labels: `update_pending` changes a row still in memory, or records a label for a row the
writer still holds; that label is journaled with the next group commit and written to the
database (`set_label`) once every row journaled before it has been written, so it can
never arrive before its row, nor be overwritten by an older one.

Bounds. The memory queue holds about `commit_interval_s` of traffic; it only grows while
the journal itself cannot be written (a full or failing disk), and past `max_pending` rows
its oldest are dropped, logged and counted (`visiondeck_history_rows_dropped_total`): the
only way an answered prediction is lost. The journal has a soft cap, `max_journal_bytes`:
past it the writer logs an error and `/ready` says "degraded" (with the reason, for an
admin), but it keeps every row. Dropping acknowledged predictions because the database is
away for long would trade a disk alarm for silent data loss; the alarm goes off long before
a disk of ordinary size is full. A row or label the database refuses for good (a value it
cannot store) while it takes the others would fail its batch on every retry and hold back
every row after it: it is set aside in `rejected.jsonl` beside the journals, logged and
counted (`visiondeck_history_rows_rejected_total`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from visiondeck.serve.history.journal_database import DatabaseSide
from visiondeck.serve.history.journal_file import JournalFile, encode_label, encode_row
from visiondeck.serve.history.store import PredictionRecord, PredictionStore

__all__ = ["COMMIT_INTERVAL_S", "DurableHistoryWriter"]

log = logging.getLogger("visiondeck.serve.history")

COMMIT_INTERVAL_S = 0.1  # the group commit: an answered row is journaled within this (+1 commit)


class DurableHistoryWriter(DatabaseSide):
    """Queue → journal (group commit) → database, for the prediction history."""

    def __init__(self, store: PredictionStore, journal_dir: Path | None = None, *,
                 batch_size: int = 256, max_pending: int = 50_000,
                 max_journal_bytes: int = 1 << 30, retry_initial_s: float = 0.25,
                 retry_max_s: float = 5.0, commit_interval_s: float = COMMIT_INTERVAL_S,
                 metrics: Any = None) -> None:
        self.store = store
        self.journal_dir = journal_dir  # None: a journal in memory (tests, no durability)
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.max_journal_bytes = max_journal_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.commit_interval_s = commit_interval_s
        self.metrics = metrics
        # request side, under _lock: rows not yet journaled, labels for rows the writer
        # holds, and the ids it holds (journaled, or with a label not yet in the database)
        self._lock = threading.Lock()
        self._queue: deque[PredictionRecord] = deque()
        self._late_labels: dict[str, str | None] = {}
        self._unsent: set[str] = set()
        # journal side, under _jlock (taken before _lock when both are needed)
        self._jlock = threading.Lock()
        self._journal: JournalFile | None = None
        self._labelled: set[str] = set()  # ids with a label in the journal's labels table
        self._hooks: list[Callable[[], None]] = []
        self._wake, self._db_wake = threading.Event(), threading.Event()
        self._stopping, self._claimed = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._close_deadline = float("inf")
        self._failed_claims: set[Path] = set()
        self.written = self.failures = self.dropped = self.replayed = self.rejected = 0
        self.healthy = True
        self._db_error: str | None = None
        self._not_durable: str | None = None  # the journal dir could not be written
        self._journal_error: str | None = None  # a failed group commit, or over the cap
        self._journal_logged = self._tidied = 0.0
        self._over_cap = False
        self._journal_done = threading.Event()
        if metrics is not None:
            metrics.registry.register(_JournalCollector(self))

    # ------------------------------------------------------------------ request side

    def submit(self, record: PredictionRecord) -> None:
        """Queue a row: an append in memory, never a wait for the disk or the database."""
        with self._lock:
            self._queue.append(record)
            size = len(self._queue)
        if size >= self.batch_size:
            self._wake.set()

    def before_write(self, hook: Callable[[], None]) -> None:
        """Call `hook` on the journal thread just before queued rows are journaled: the drift
        monitor folds its queued predictions there, in bulk and off the event loop, and
        annotates their rows while they are still in memory."""
        self._hooks.append(hook)

    def update_pending(self, record_id: str, label: str | None,
                       labels: list[str] | None = None) -> bool:
        """Set the label (and a multi-label row's true set, `labels`) of a row the writer
        still holds (queued, journaled, or with a label on its way); False when it holds
        nothing of that id (then update the database)."""
        with self._lock:
            for record in reversed(self._queue):  # a label follows its prediction closely
                if record.id == record_id:
                    record.label, record.true_labels = label, labels
                    return True
            if record_id in self._unsent or record_id in self._late_labels:
                self._late_labels[record_id] = encode_label(label, labels)
                self._unsent.add(record_id)
                return True
        return False

    def annotate(self, record_id: str, **fields: Any) -> bool:
        """Set fields of a row still in memory (the drift monitor adds its embedding
        projection right after the prediction is queued). False once the row is journaled:
        the values are dropped."""
        with self._lock:
            for _, record in zip(range(_ANNOTATE_SCAN), reversed(self._queue), strict=False):
                if record.id == record_id:
                    for name, value in fields.items():
                        setattr(record, name, value)
                    return True
        return False

    @property
    def journaled(self) -> int:
        """Rows in the journal, not yet in the database."""
        journal = self._journal
        return 0 if journal is None else journal.rows

    @property
    def pending(self) -> int:
        """Rows answered but not yet in the database (in memory or in the journal)."""
        return len(self._queue) + self.journaled

    @property
    def status(self) -> str:
        return "ok" if self.healthy and self.last_error is None else "degraded"

    @property
    def last_error(self) -> str | None:
        problems = [p for p in (self._not_durable, self._journal_error, self._db_error) if p]
        return "; ".join(problems) or None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open this writer's journal and start both threads; journals left by other
        processes and an old spool are taken over by the database thread, off the caller."""
        if self._threads:
            return
        self._open_journal()
        self._stopping.clear()
        self._journal_done.clear()
        self._threads = [
            threading.Thread(target=self._journal_loop, name="visiondeck-history-journal",
                             daemon=True),
            threading.Thread(target=self._database_loop, name="visiondeck-history-db",
                             daemon=True)]
        for thread in self._threads:
            thread.start()

    def close(self, flush_timeout_s: float = 10.0) -> int:
        """Journal what is queued, write what the database takes within the timeout (not
        waiting for one that is away) and release the journal; what is left in it is
        replayed by the next writer to start. Returns the number of rows left."""
        self._close_deadline = time.monotonic() + flush_timeout_s
        self._stopping.set()
        self._wake.set()
        self._db_wake.set()
        if not self._threads and self._queue:
            self._open_journal()
            self._commit()
        for thread in self._threads:
            thread.join(max(0.0, self._close_deadline - time.monotonic()) + 0.5)
        self._threads = []
        with self._jlock:
            journal, self._journal = self._journal, None
            lost = len(self._queue)  # only when the journal could not be written
            if journal is None:
                return lost
            left = journal.rows
            journal.close(remove=left == 0 and journal.label_count() == 0)
        if left:
            log.warning("history: %d prediction rows wait in the journal %s for the "
                        "database; the next start writes them", left, journal.path)
        if lost:
            self.dropped += lost
            log.error("history: %d answered predictions lost at shutdown: the journal could "
                      "not be written", lost)
        self._gauge(0)
        return left + lost

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row and label reached the database (tests, admin)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._wake.set()
            self._db_wake.set()
            with self._jlock:  # not while rows are between the queue and the journal
                journal = self._journal
                if (self._claimed.is_set() and not self._queue and not self._late_labels
                        and journal is not None and journal.rows == 0 and not self._labelled):
                    return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ journal thread

    def _open_journal(self) -> None:
        with self._jlock:
            if self._journal is not None:
                return
            try:
                self._journal = JournalFile.create(self.journal_dir)
            except (OSError, sqlite3.Error) as exc:
                self._not_durable = (f"history journal not durable: {self.journal_dir} "
                                     f"cannot be written ({exc})")
                log.error("%s; rows are kept in memory until the database takes them",
                          self._not_durable)
                self._journal = JournalFile.create(None)
        if self.journal_dir is None:
            self._claimed.set()

    def _journal_loop(self) -> None:
        last = time.monotonic()
        while True:
            stopping = self._stopping.is_set()  # then one last commit
            if not stopping:
                self._wake.wait(max(0.0, last + self.commit_interval_s - time.monotonic()))
                self._wake.clear()
                last = time.monotonic()
            try:
                self._commit()
            except Exception:  # the next interval tries again; this thread must not end
                log.exception("history: a group commit failed")
            if stopping:
                break
        self._journal_done.set()
        self._db_wake.set()

    def _commit(self) -> None:
        """One group commit: every queued row and late label into the journal."""
        if self._queue:
            for hook in self._hooks:
                try:
                    hook()
                except Exception:  # monitoring must never stop the history
                    log.exception("a before-write hook failed")
        with self._jlock:
            journal = self._journal
            if journal is None:
                return
            with self._lock:
                records, labels = list(self._queue), self._late_labels
                self._queue.clear()
                self._late_labels = {}
                self._unsent.update(r.id for r in records)
                new_labels = labels.keys() - self._labelled
                self._labelled.update(labels)
            if not records and not labels:
                if time.monotonic() - self._tidied > 1.0:  # idle: delete what was written
                    self._tidied = time.monotonic()
                    with contextlib.suppress(sqlite3.Error):
                        journal.tidy()
                return
            try:
                journal.append([encode_row(r) for r in records], labels, records=records)
            except Exception as exc:  # a full disk, mostly: the rows wait in memory
                with self._lock:
                    self._labelled.difference_update(new_labels)
                    self._late_labels = labels | self._late_labels
                    self._queue.extendleft(reversed(records))
                    dropped = max(0, len(self._queue) - self.max_pending)
                    for _ in range(dropped):
                        self._unsent.discard(self._queue.popleft().id)
                self._journal_failed(exc, dropped)
                return
            used = journal.used_bytes()
        self._journal_ok(used)
        self._db_wake.set()
        self._gauge()

    def _journal_failed(self, exc: BaseException, dropped: int) -> None:
        self._journal_error = f"history journal write failed: {type(exc).__name__}: {exc}"
        if time.monotonic() - self._journal_logged > 10:  # ten attempts a second
            self._journal_logged = time.monotonic()
            log.error("%s; %d rows wait in memory", self._journal_error, len(self._queue))
        if dropped:
            self.dropped += dropped
            log.error("history: %d answered predictions dropped, more than max_pending=%d "
                      "waited for the journal", dropped, self.max_pending)

    def _journal_ok(self, used: int) -> None:
        if used > self.max_journal_bytes:
            self._journal_error = (
                f"history journal over its cap: {used >> 20} MiB > "
                f"{self.max_journal_bytes >> 20} MiB, the database has been away long; "
                f"every row is kept until the disk is full")
            if not self._over_cap:
                log.error("%s", self._journal_error)
            self._over_cap = True
            return
        if self._over_cap:
            log.warning("history journal back under its cap (%d MiB)", used >> 20)
        self._journal_error, self._over_cap = None, False

    def _gauge(self, value: int | None = None) -> None:
        if self.metrics is not None:
            self.metrics.store_pending.set(self.pending if value is None else value)


class _JournalCollector:
    """`/metrics` series of the writer, read when scraped."""

    def __init__(self, writer: DurableHistoryWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        w = self.writer
        yield GaugeMetricFamily("visiondeck_history_journal_rows",
                                "answered predictions in the local journal, not yet in the "
                                "database", value=w.journaled)
        yield GaugeMetricFamily("visiondeck_history_journal_labels",
                                "labels in the local journal, not yet in the database",
                                value=len(w._labelled))
        yield CounterMetricFamily("visiondeck_history_rows_dropped",
                                  "answered predictions lost: the journal could not be "
                                  "written and max_pending rows waited", value=w.dropped)
        yield CounterMetricFamily("visiondeck_history_rows_replayed",
                                  "rows taken over from journals of stopped processes or an "
                                  "old spool", value=w.replayed)
        yield CounterMetricFamily("visiondeck_history_rows_rejected",
                                  "rows and labels the database refused for good (kept in "
                                  "the journal folder's rejected.jsonl)", value=w.rejected)
        yield GaugeMetricFamily("visiondeck_history_journal_over_cap",
                                "1 while the journal is larger than max_journal_bytes",
                                value=int(w._over_cap))


_ANNOTATE_SCAN = 1024  # rows annotate() looks through, newest first
