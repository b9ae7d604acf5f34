"""Rows and labels the database refuses for good, told apart from a database that is away.

A row the database cannot store (a value it refuses) while it takes the others would fail
its batch on every retry and hold back every row journaled after it. The history writer's
database thread (journal_database.py) therefore writes a refused batch again one item at a
time: the items refused while others go in are set aside in `rejected.jsonl` beside the
journals, logged, and taken out of the journal. When every item is refused the fault is
not theirs (a permission, a missing table, an outage): the error stands and they all wait in
the journal. Kept apart from the writer because this is the one rule for deciding whose
fault a failed write is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from visiondeck.serve.history.journal_file import to_plain
from visiondeck.serve.history.store import PredictionRecord

__all__ = ["REJECTED", "describe", "isolate", "row_fault", "set_aside"]

log = logging.getLogger("visiondeck.serve.history")

REJECTED = "rejected.jsonl"  # rows and labels the database refuses for good, for an operator


def row_fault(exc: BaseException) -> bool:
    """Whether a failed write may be one value's fault (refused data, a value the driver
    cannot bind) rather than the database being away (a connection or lock error)."""
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    return isinstance(exc, sa.exc.StatementError | TypeError | ValueError)


def isolate(items: list[Any], write: Callable[[Any], None]) -> list[tuple[Any, Exception]]:
    """Write `items` one at a time: those refused while others go in. When every one is
    refused, the fault is not theirs (a permission, a missing table): that error is raised
    and all of them wait, as they do for an outage."""
    refused: list[tuple[Any, Exception]] = []
    for item in items:
        try:
            write(item)
        except Exception as exc:
            if not row_fault(exc):
                raise
            refused.append((item, exc))
    if refused and len(refused) == len(items):
        raise refused[0][1]
    return refused


def set_aside(refused: list[tuple[Any, Exception]], journal_dir: Path | None) -> None:
    """Log rows (`PredictionRecord`) or labels (`(id, label, ...)`) refused for good and
    append them to `journal_dir / REJECTED` for an operator (no file without a journal)."""
    lines = []
    for item, exc in refused:
        data = (item.to_json(thumbnail=True) if isinstance(item, PredictionRecord)
                else {"id": item[0], "label": item[1]})
        lines.append(json.dumps({"error": describe(exc), **data}, default=to_plain))
        log.error("history: the database refuses %s for good (%s); kept in %s",
                  data["id"], describe(exc), journal_dir or "no file (no journal)")
    if journal_dir is not None:
        with contextlib.suppress(OSError), os.fdopen(os.open(
                journal_dir / REJECTED, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o600), "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))


def describe(exc: BaseException) -> str:
    """An error in one line of at most about 200 characters, for logs and /ready."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
