"""Fixtures of the tracking and registry tests.

`tracked` trains two tiny runs once per session with the MLflow tracker on the embedded
store: "alpha" straight through, "beta" killed after its first epoch and resumed. `bundles`
exports alpha once and makes Bundle variants with chosen metrics (what promote compares).
`mlflow_server` starts the real thing: seaweedfs S3 + a fresh PostgreSQL database + `mlflow
server`, once per session; when it cannot start, the tests FAIL (set
VISIONDECK_SKIP_SERVER_TESTS=1 to skip them on a machine without PostgreSQL).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.factories import crash_at_epoch, write_learnable

TINY = ["data.image_size=16", "data.channels=3", "data.augment=none", "data.cache=memory",
        "data.num_workers=1", "data.val_fraction=0.25", "data.test_fraction=0.25",
        "model.name=simple_cnn", "train.epochs=2", "train.batch_size=16", "train.lr=0.01"]




@dataclass
class Tracked:
    runs_root: Path
    alpha: Path
    beta: Path
    beta_run_before_resume: str
    beta_status_before_resume: str

    @property
    def uri(self) -> str:
        from visiondeck.registry.store import embedded_uri

        return embedded_uri(self.runs_root)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No tracking URI leaks in from the environment; a fresh model cache per test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("VISIONDECK_MODEL_CACHE", str(tmp_path / "model-cache"))


@pytest.fixture(scope="session")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Tracked:
    from visiondeck.config import load_recipe
    from visiondeck.registry.store import read_link
    from visiondeck.registry.tracking import tracker_for, tracker_for_run
    from visiondeck.train.runner import resume, train

    base = tmp_path_factory.mktemp("tracked")
    data = write_learnable(base / "images", per_class=24)
    common = [f"data.source={data}", *TINY, f"output_dir={base / 'runs'}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(base)
        alpha = load_recipe(None, [*common, "name=alpha", "train.min_val_accuracy=0.3"])
        alpha_dir = train(alpha, progress=False, tracker=tracker_for(alpha)).run_dir
        beta = load_recipe(None, [*common, "name=beta", "train.lr=0.003"])
        beta_dir = base / "runs" / "beta"
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(beta, run_dir=beta_dir, progress=False, tracker=tracker_for(beta),
                  callbacks=[crash_at_epoch(1)])
        link = read_link(beta_dir)
        assert link is not None
        status = link.store().client.get_run(link.run_id).info.status
        resume(beta_dir, progress=False, tracker=tracker_for_run(beta_dir))
    return Tracked(base / "runs", alpha_dir, beta_dir, link.run_id, status)


@pytest.fixture(scope="session")
def scratch_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded store for the tests that need a store but no trained run (creating a
    SQLite store runs MLflow's migrations, a few seconds each time)."""
    return f"sqlite:///{tmp_path_factory.mktemp('scratch') / 'mlflow.db'}"


@dataclass
class Bundles:
    alpha: Path  # the exported Bundle of the alpha run (alpha/bundle)
    make: Callable[..., Path]


@pytest.fixture(scope="session")
def bundles(tracked: Tracked, tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    """alpha exported once (with evaluation metrics), plus a factory of variants."""
    from visiondeck.export.bundle import load_bundle, write_bundle_json
    from visiondeck.export.onnx_export import export_run

    evaluation = tracked.alpha / "evaluation"
    evaluation.mkdir(exist_ok=True)
    (evaluation / "metrics.json").write_text(json.dumps(
        {"headline": {"accuracy": 0.9, "macro_f1": 0.9}}))
    bundle = export_run(tracked.alpha, parity_images=16).path
    where = tmp_path_factory.mktemp("variants")

    def make(macro_f1: float, *, fingerprint: str | None = None, accuracy: float = 0.9) -> Path:
        """A copy of alpha's Bundle claiming other metrics (or another data fingerprint)."""
        target = where / uuid.uuid4().hex[:8]
        shutil.copytree(bundle, target)
        info = dict(load_bundle(target).info)
        info["metrics"] = {"accuracy": accuracy, "macro_f1": macro_f1}
        if fingerprint is not None:
            info["data"] = {**info["data"], "fingerprint": fingerprint}
        write_bundle_json(target, info)
        return target

    return Bundles(bundle, make)


@pytest.fixture
def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------- real servers


@dataclass
class Servers:
    uri: str  # the MLflow tracking server
    s3: object  # tests.servers.S3Server
    db: object  # tests.servers.Database


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """seaweedfs S3 + a fresh PostgreSQL database + `mlflow server` (artifacts proxied to
    s3://bucket/). Failing to start is a test failure, not a skip."""
    from tests.servers import (
        ServerError,
        create_database,
        drop_database,
        start_mlflow_server,
        start_seaweedfs,
    )

    if os.environ.get("VISIONDECK_SKIP_SERVER_TESTS") == "1":
        pytest.skip("VISIONDECK_SKIP_SERVER_TESTS=1")
    base = tmp_path_factory.mktemp("servers")
    started: list = []
    db = None
    try:
        db = create_database()
        # both take seconds: seaweedfs comes up while the MLflow server starts
        s3 = start_seaweedfs(base / "s3", bucket="mlflow", wait=False)
        started.append(s3)
        server = start_mlflow_server(base / "mlflow", db.url, "s3://mlflow/", env=s3.env)
        started.append(server)
        s3.wait_ready()
    except ServerError as exc:
        for item in reversed(started):
            item.stop()
        if db is not None:
            drop_database(db)
        pytest.fail(f"cannot start the test servers: {exc}", pytrace=False)
    try:
        yield Servers(server.uri, s3, db)
    finally:
        for item in reversed(started):
            item.stop()
        drop_database(db)
