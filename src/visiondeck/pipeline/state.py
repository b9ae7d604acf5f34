"""What the pipeline remembers between runs: one record per step, in one JSON file.

`<output_dir>/pipeline/<recipe name>/state.json` holds, for every step that ran, the hash of
its inputs, what it produced (paths and content hashes) and how it ended. The next run
compares hashes instead of dates, so a step is skipped exactly when re-running it could not
change anything, and a failed or killed run leaves every earlier step recorded to resume
from. The file is replaced atomically and a lock keeps two pipelines on the same recipe
from interleaving their writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visiondeck._files import atomic_write_json, file_sha256, tree_sha256
from visiondeck.errors import VisionDeckError

__all__ = [
    "COMPLETE",
    "PipelineError",
    "PipelineState",
    "StepRecord",
    "hash_file",
    "hash_json",
    "hash_tree",
    "pipeline_lock",
]

STATE_VERSION = 1
#: recorded statuses that count as finished: the step need not run again for the same inputs
COMPLETE = ("ran", "refused", "off")


class PipelineError(VisionDeckError):
    """The pipeline cannot start or continue as asked (missing upstream step, busy lock)."""

    exit_code = 2


@dataclass
class StepRecord:
    """One step's last outcome as stored in state.json.

    status: "ran" (finished), "refused" (a registry policy said no), "off" (nothing to do,
    e.g. tracking disabled), "failed", or "running" (started and never finished: killed).
    """

    name: str
    status: str
    input_hash: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the one line the summary table shows
    duration_s: float = 0.0
    error: str | None = None
    updated: str = ""

    @property
    def complete(self) -> bool:
        return self.status in COMPLETE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class PipelineState:
    """The state file of one recipe's pipeline, read once and written after every change."""

    def __init__(self, path: Path, recipe_name: str) -> None:
        self.path = path
        self.recipe_name = recipe_name
        self.steps: dict[str, StepRecord] = {}

    @classmethod
    def load(cls, path: str | os.PathLike[str], recipe_name: str) -> PipelineState:
        state = cls(Path(path), recipe_name)
        if not state.path.is_file():
            return state
        try:
            data = json.loads(state.path.read_text(encoding="utf-8"))
            if data.get("state_version") != STATE_VERSION:
                return state  # an older layout: every step runs once more, nothing breaks
            state.steps = {name: StepRecord.from_json(rec)
                           for name, rec in (data.get("steps") or {}).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            # a damaged state file costs a full re-run, never a crash: the steps' own
            # outputs (split, run folders, Bundles) are still on disk and reused where valid
            state.steps = {}
        return state

    def get(self, name: str) -> StepRecord | None:
        return self.steps.get(name)

    def record(self, record: StepRecord) -> None:
        record.updated = datetime.now(UTC).isoformat(timespec="seconds")
        self.steps[record.name] = record
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"state_version": STATE_VERSION, "recipe": self.recipe_name,
                "steps": {name: rec.to_json() for name, rec in self.steps.items()}}
        atomic_write_json(self.path, data, default=str)


@contextlib.contextmanager
def pipeline_lock(folder: Path) -> Iterator[None]:
    """Hold `folder/lock` while a pipeline (or one Airflow task) works on this recipe.

    Non-blocking: a second pipeline on the same recipe fails at once with a clear message
    rather than waiting behind, or interleaving with, the first. The OS drops the lock when
    the holder dies, so a killed run never leaves the recipe locked.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one pipeline at a time is on the user
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"another pipeline is running on this recipe (lock {folder / 'lock'})",
                hint="wait for it to finish; a killed pipeline releases the lock by itself",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ hashing


def hash_json(value: Any) -> str:
    """sha256 of a JSON-able value with sorted keys: same content, same hash."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


hash_file = file_sha256  # the content digests every step records
hash_tree = tree_sha256
