"""The shared-server workflow against real servers: `mlflow server` on PostgreSQL with its
artifacts in a seaweedfs S3 bucket (see `mlflow_server` in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from tests.factories import pattern
from typer.testing import CliRunner

from visiondeck.cli import app
from visiondeck.registry.models import promote, register
from visiondeck.registry.resolve import resolve_bundle
from visiondeck.registry.runlog import bundle_digest

REGISTER = """
import json, sys
from visiondeck.registry.models import register
done = register(sys.argv[1], sys.argv[2])
print(json.dumps({"version": done.version, "source": done.source}))
"""


def test_register_promote_resolve_and_predict_on_a_server(mlflow_server, tracked, bundles,
                                                         monkeypatch) -> None:
    from visiondeck.export.predictor import Predictor

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    name = "digits-server"
    done = register(tracked.alpha, name)
    assert done.version == "1" and done.store == mlflow_server.uri
    digest = bundle_digest(bundles.alpha)
    # the files went through the server's artifact proxy into the S3 bucket
    keys = mlflow_server.s3.keys()
    assert any(k.endswith(f"/bundle-{digest[:12]}/model.onnx") for k in keys), keys
    assert any(k.endswith(f"/bundle-{digest[:12]}/bundle.json") for k in keys)
    # and the registry rows are in PostgreSQL
    rows = mlflow_server.db.query("SELECT name, version FROM model_versions")
    assert (name, 1) in rows
    assert promote(name, 1).alias == "champion"
    worse = register(bundles.make(0.5), name)
    refused = CliRunner().invoke(app, ["promote", name, worse.version])
    assert refused.exit_code == 10 and "worse" in refused.output

    local = resolve_bundle(f"models:/{name}@champion")
    assert bundle_digest(local) == digest
    images = [pattern(seed, 16) for seed in range(4)]
    reference, served = Predictor(bundles.alpha), Predictor(f"models:/{name}@champion")
    assert served.bundle.path == local
    batch = np.stack([served.bundle.prepare(image) for image in images])
    assert np.allclose(served.logits(batch), reference.logits(batch), atol=1e-6)
    got, expected = served.predict(images), reference.predict(images)
    assert [p.label for p in got] == [p.label for p in expected]


def test_two_processes_registering_at_once_get_distinct_versions(mlflow_server, bundles,
                                                                tmp_path: Path) -> None:
    name = "concurrent"
    variants = [bundles.make(0.8 + i / 100) for i in range(2)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "VISIONDECK_MODEL_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", REGISTER, str(v), name], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in variants]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["version"] for r in results) == ["1", "2"]
    for variant, result in zip(variants, results, strict=True):
        local = resolve_bundle(f"models:/{name}/{result['version']}",
                               tracking_uri=mlflow_server.uri)
        assert bundle_digest(local) == bundle_digest(variant)  # nothing lost or mixed up
        info = json.loads((local / "bundle.json").read_text())
        assert info["metrics"] == json.loads((variant / "bundle.json").read_text())["metrics"]


def test_the_cli_registers_promotes_and_lists_on_the_server(mlflow_server, bundles) -> None:
    name = "cli-server"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "COLUMNS": "200"}
    cli = CliRunner()
    registered = cli.invoke(app, ["register", str(bundles.make(0.6)), "--name", name], env=env)
    assert registered.exit_code == 0, registered.output
    assert f"models:/{name}/1" in registered.output
    moved = cli.invoke(app, ["promote", name, "1", "--alias", "challenger"], env=env)
    assert moved.exit_code == 0 and f"models:/{name}@challenger" in moved.output
    listed = cli.invoke(app, ["runs", "list"], env=env)
    assert listed.exit_code == 0 and "register" in listed.output
