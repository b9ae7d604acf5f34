"""Where runs and models are tracked: an embedded SQLite store, or a server when a team grows.

The same code talks to both. With nothing configured, runs go to an embedded store beside the
run folders: `<output_dir>/mlruns/mlflow.db` (SQLite, tracking and registry) with artifacts
in `<output_dir>/mlruns/artifacts/` - no service to start, one folder to copy or delete, and
`visiondeck ui` reads it. `tracking.uri` in the recipe, else `$MLFLOW_TRACKING_URI`, points
the same commands at anything MLflow understands (an `http://` tracking server backed by
PostgreSQL and S3, another SQLite file...). S3 settings are MLflow's and boto3's own
(`MLFLOW_S3_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).

A run folder remembers its MLflow run in `RUN/mlflow.json` (a `RunLink`), so evaluation,
export, registration and `train --resume` attach to the run training created, in the store
it was created in, whatever the current directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from visiondeck._files import atomic_write_json
from visiondeck.registry.errors import RegistryError

__all__ = [
    "ARTIFACTS_DIR", "DB_FILE", "LINK_FILE", "STORE_DIR", "RunLink", "Store",
    "embedded_uri", "load_mlflow", "open_store", "read_link", "redact_uri",
    "resolve_tracking_uri", "sqlite_path", "store_key", "write_link",
]  # fmt: skip

STORE_DIR = "mlruns"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
LINK_FILE = "mlflow.json"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_REGISTRY_URI = "MLFLOW_REGISTRY_URI"


def load_mlflow() -> ModuleType:
    """Import MLflow on first use, quietly.

    MLflow prints a "View run at" link after every run, draws download progress bars and
    logs its schema migrations at INFO; in a CLI that prints its own rich output that is
    noise. The defaults below apply only where the user has not set them.
    """
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        import mlflow
    except ImportError as exc:
        raise RegistryError(f"MLflow is not installed ({exc})",
                            hint="pip install 'visiondeck[track]', or set "
                                 "tracking.enabled=false") from None
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    return mlflow


# ----------------------------------------------------------------------------- the URI


def embedded_uri(runs_root: str | os.PathLike[str] = "runs") -> str:
    """The embedded SQLite store of a runs folder (absolute, so any cwd finds it)."""
    db = (Path(runs_root) / STORE_DIR / DB_FILE).resolve()
    return f"sqlite:///{db}"


def resolve_tracking_uri(uri: str | None = None,
                         runs_root: str | os.PathLike[str] = "runs") -> str:
    """The store to use: `uri` (the recipe's tracking.uri or a --tracking-uri option) first,
    then $MLFLOW_TRACKING_URI, then the embedded store under `runs_root`.

    A relative `sqlite:///x.db` is made absolute, so a run folder's link stays valid from
    any working directory.
    """
    chosen = uri or os.environ.get(ENV_TRACKING_URI) or embedded_uri(runs_root)
    if chosen.startswith("sqlite:///") and not chosen.startswith("sqlite:////"):
        chosen = f"sqlite:///{Path(unquote(chosen[len('sqlite:///'):])).resolve()}"
    return chosen


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for any other store)."""
    if uri.startswith("sqlite:///"):
        return Path(unquote(uri[len("sqlite:///"):].split("?", 1)[0]))
    return None


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ***, for printing and for run folders."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def store_key(uri: str) -> str:
    """A short stable name for a store (cache folders are keyed by it)."""
    return hashlib.sha256(redact_uri(uri).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- the store


@dataclass
class Store:
    """One tracking store + model registry and the client that talks to it."""

    uri: str
    #: where new experiments keep artifacts; None = the server (or MLflow) decides
    artifact_root: Path | None = None
    _experiments: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_embedded(self) -> bool:
        return self.uri.startswith("sqlite:")

    @property
    def display(self) -> str:
        return redact_uri(self.uri)

    @cached_property
    def client(self) -> Any:
        """An `MlflowClient` bound to this store for both tracking and registry (never the
        process-global URI, so two stores can be used side by side)."""
        mlflow = load_mlflow()
        registry = os.environ.get(ENV_REGISTRY_URI) or self.uri
        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=registry)

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created on first use (safe against a racing
        process creating it at the same moment)."""
        if name in self._experiments:
            return self._experiments[name]
        from mlflow.exceptions import MlflowException

        client = self.client
        found = client.get_experiment_by_name(name)
        if found is None:
            location = None
            if self.artifact_root is not None:
                slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
                location = (self.artifact_root / slug).resolve().as_uri()
            try:
                experiment_id = client.create_experiment(name, artifact_location=location)
            except MlflowException:
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
        self._experiments[name] = str(experiment_id)
        return str(experiment_id)

    def run_exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True


_STORES: dict[str, Store] = {}


def open_store(uri: str | None = None, runs_root: str | os.PathLike[str] = "runs", *,
               must_exist: bool = False) -> Store:
    """The store for `uri` (see `resolve_tracking_uri`); one client per store per process.

    `must_exist=True` refuses to create an empty embedded store where the user expected
    one (e.g. `runs list` in the wrong folder) and says where it looked.
    """
    resolved = resolve_tracking_uri(uri, runs_root)
    db = sqlite_path(resolved)
    if db is not None and must_exist and not db.is_file():
        raise RegistryError(
            f"no tracking store at {db}",
            hint="train a run first (`visiondeck train`), run from the project folder, give "
                 "--runs-dir, or set MLFLOW_TRACKING_URI to your tracking server")
    if resolved in _STORES:
        return _STORES[resolved]
    artifact_root = None
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_root = db.parent / ARTIFACTS_DIR
    store = Store(resolved, artifact_root)
    _STORES[resolved] = store
    return store


# ----------------------------------------------------------------------- run folder links


@dataclass(frozen=True)
class RunLink:
    """What `RUN/mlflow.json` records: which MLflow run, in which store, holds this run."""

    tracking_uri: str
    run_id: str
    experiment_id: str
    experiment: str
    #: True when the URI held a password that was not written to disk
    redacted: bool = False

    def store(self, fallback_uri: str | None = None) -> Store:
        """The store the run lives in (a redacted URI falls back to the configured one)."""
        return open_store(fallback_uri if self.redacted else self.tracking_uri)


def read_link(folder: str | os.PathLike[str]) -> RunLink | None:
    """The MLflow run of a run folder, or None when the folder was never tracked."""
    path = Path(folder) / LINK_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return RunLink(str(raw["tracking_uri"]), str(raw["run_id"]),
                       str(raw["experiment_id"]), str(raw.get("experiment", "")),
                       bool(raw.get("redacted", False)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_link(folder: str | os.PathLike[str], *, tracking_uri: str, run_id: str,
               experiment_id: str, experiment: str) -> RunLink:
    """Record the MLflow run in `folder/mlflow.json` atomically (never a password)."""
    shown = redact_uri(tracking_uri)
    link = RunLink(shown, run_id, experiment_id, experiment, redacted=shown != tracking_uri)
    atomic_write_json(Path(folder) / LINK_FILE, asdict(link))
    return link
