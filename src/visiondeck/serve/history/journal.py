"""Write prediction rows off the request path, retrying until the database takes them.

A prediction is answered first; its row is handed to `StoreWriter.submit`, which only
appends to an in-memory queue. One background thread drains the queue in batches. When
the database is slow or down, the batch stays queued and is retried with exponential
backoff (the service reports the store as "degraded" on `/ready`). Nothing is lost:
- on a clean shutdown the thread keeps trying for `flush_timeout_s`, and whatever it still
  could not write is appended to a JSON-lines spool file;
- when more than `max_pending` rows wait in memory, the oldest go to the spool file too;
- the spool is replayed into the database once it answers again (also after a restart).
Rows carry their id and inserts skip ids already present, so a retried batch whose commit
did succeed is not duplicated.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visiondeck.serve.history.store import PredictionRecord, PredictionStore

__all__ = ["StoreWriter"]

log = logging.getLogger("visiondeck.serve.history.store")
_ANNOTATE_SCAN = 1024  # rows annotate() looks through, newest first


class StoreWriter:
    """A queue and one thread between the request path and `PredictionStore`."""

    def __init__(self, store: PredictionStore, *, spool_path: Path | None = None,
                 batch_size: int = 256, max_pending: int = 50_000,
                 retry_initial_s: float = 0.25, retry_max_s: float = 5.0,
                 linger_s: float = 0.2, metrics: Any = None) -> None:
        self.store = store
        self.spool_path = spool_path
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.linger_s = linger_s
        self.metrics = metrics
        self._queue: deque[PredictionRecord] = deque()
        self._late_labels: dict[str, str | None] = {}  # labels of rows being written
        self._hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        self.healthy = True

    # ------------------------------------------------------------------ request side

    def submit(self, record: PredictionRecord) -> None:
        """Queue a row; never blocks on the database and never raises for it."""
        overflow: list[PredictionRecord] = []
        with self._lock:
            self._queue.append(record)
            while len(self._queue) > self.max_pending:
                overflow.append(self._queue.popleft())
        if overflow:
            self._spool(overflow)
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def before_write(self, hook: Callable[[], None]) -> None:
        """Call `hook` on the writer thread just before each batch is taken from the queue:
        the drift monitor folds its queued predictions there, in bulk and off the event
        loop, and annotates their rows while they are still queued."""
        self._hooks.append(hook)

    def update_pending(self, record_id: str, label: str | None) -> bool:
        """Set the label of a row still waiting in memory (a label sent right after the
        prediction); False when the row is not queued (then update the database)."""
        with self._lock:
            for i, record in enumerate(self._queue):
                if record.id == record_id:
                    record.label = label
                    if i < self._inflight:  # its row may be serialised already: set the
                        self._late_labels[record_id] = label  # label again once written
                    return True
        return False

    def annotate(self, record_id: str, **fields: Any) -> bool:
        """Set fields of a row still waiting in memory and not yet being written (the drift
        monitor adds its embedding projection right after the prediction is queued).
        False when the row is already on its way to the database: the values are dropped."""
        with self._lock:
            # newest first: the row was queued microseconds ago, so it is among the last
            # few; the scan stops at the rows being written and after _ANNOTATE_SCAN rows
            searchable = min(len(self._queue) - self._inflight, _ANNOTATE_SCAN)
            for _, record in zip(range(searchable), reversed(self._queue), strict=False):
                if record.id == record_id:
                    for name, value in fields.items():
                        setattr(record, name, value)
                    return True
        return False

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def status(self) -> str:
        return "ok" if self.healthy else "degraded"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._load_spool()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="visiondeck-store-writer",
                                        daemon=True)
        self._thread.start()

    def close(self, flush_timeout_s: float = 10.0) -> int:
        """Stop after writing what is queued (up to the timeout); spool the rest.

        Returns the number of rows spooled (0 when everything reached the database).
        """
        deadline = time.monotonic() + flush_timeout_s
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
            self._thread = None
        while self._queue and time.monotonic() < deadline and self._write_batch():
            pass
        with self._lock:
            left = list(self._queue)
            self._queue.clear()
        if left:
            self._spool(left)
            log.warning("database unavailable at shutdown: %d prediction rows spooled to %s",
                        len(left), self.spool_path)
        self._gauge()
        return len(left)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the queue is empty (tests, admin); True when it emptied in time."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while time.monotonic() < deadline:
            if not self._queue and not self._busy:
                return True
            time.sleep(0.01)
        return not self._queue

    # ------------------------------------------------------------------ the thread

    _busy = False
    _inflight = 0  # rows at the left of the queue being written now (annotate skips them)

    def _run(self) -> None:
        delay = self.retry_initial_s
        while not self._stop.is_set():
            # linger: rows arriving together are written together (one transaction, and
            # far less time holding the GIL than a write per prediction)
            self._wake.wait(self.linger_s)
            self._wake.clear()
            if not self._queue:
                if self.healthy:
                    self._replay_spool()
                continue
            while self._queue and not self._stop.is_set():
                if self._write_batch():
                    delay = self.retry_initial_s
                else:
                    self._stop.wait(delay)  # back off, but wake at once for shutdown
                    delay = min(self.retry_max_s, delay * 2)
                    break

    def _write_batch(self) -> bool:
        for hook in self._hooks:
            try:
                hook()
            except Exception:  # monitoring must never stop the history
                log.exception("a before-write hook failed")
        with self._lock:
            batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            self._inflight = len(batch)
        if not batch:
            return True
        self._busy = True
        try:
            self.store.insert_many(batch)
        except Exception as exc:
            with self._lock:
                self._inflight = 0
            self.failures += 1
            self.healthy = False
            self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if self.metrics is not None:
                self.metrics.store_failures.inc()
            self._gauge()
            log.warning("prediction store write failed (%s); %d rows queued, will retry",
                        self.last_error, len(self._queue))
            return False
        finally:
            self._busy = False
        with self._lock:
            for _ in batch:  # only this thread removes from the left end
                self._queue.popleft()
            self._inflight = 0
            late = {r.id: self._late_labels.pop(r.id) for r in batch
                    if r.id in self._late_labels}
        for record_id, label in late.items():
            try:
                self.store.set_label(record_id, label)
            except Exception as exc:
                log.warning("a label sent while its row was being written was lost: %s", exc)
        self.written += len(batch)
        self.healthy, self.last_error = True, None
        self._gauge()
        return True

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.store_pending.set(len(self._queue))

    # ------------------------------------------------------------------ spool file

    def _spool(self, records: list[PredictionRecord]) -> None:
        if self.spool_path is None:
            log.error("no spool file configured: %d prediction rows dropped", len(records))
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.spool_path, "a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record.to_json(thumbnail=True)) + "\n")

    def _load_spool(self) -> None:
        """At start: queue spooled rows first (they are older than anything new)."""
        records = self._take_spool()
        if records:
            with self._lock:
                self._queue.extendleft(reversed(records))
            log.info("replaying %d spooled prediction rows", len(records))

    def _replay_spool(self) -> None:
        if self.spool_path is not None and self.spool_path.exists():
            self._load_spool()

    def _take_spool(self) -> list[PredictionRecord]:
        path = self.spool_path
        if path is None or not path.exists():
            return []
        claimed = path.with_suffix(f".{os.getpid()}.replay")
        with self._lock:
            try:
                os.replace(path, claimed)  # atomic: another worker cannot replay it twice
            except FileNotFoundError:
                return []
        records = []
        for line in claimed.read_text(encoding="utf-8").splitlines():
            try:
                records.append(PredictionRecord.from_json(json.loads(line)))
            except Exception:  # a torn last line from a crash: skip it, keep the rest
                log.warning("skipping an unreadable spool line")
        claimed.unlink()
        return records
