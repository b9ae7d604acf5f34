"""A real `visiondeck serve` process: cold start, no torch, clean shutdown keeps every row;
the observer seam; the `keys` commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from tests.serve.conftest import learnable_png
from tests.servers import free_port
from visiondeck.serve.history.store import PredictionQuery, PredictionStore
from visiondeck.serve.monitoring.observers import PredictionEvent


def test_real_server_cold_start_without_torch(serve_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
    env["VISIONDECK_WATCH_INTERVAL_S"] = "0"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "visiondeck", "serve", str(serve_bundle), "--port", str(port),
         "--data-dir", str(tmp_path / "data"), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        ready = None
        while time.perf_counter() - started < 300:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                ready = httpx.get(f"{base}/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        cold_start = time.perf_counter() - started
        assert ready is not None and ready.status_code == 200
        ids = []
        for cls in ("left", "middle", "right"):
            response = httpx.post(f"{base}/predict", files={"image": learnable_png(cls)})
            assert response.status_code == 200
            ids.append(response.json()["id"])
        after = httpx.get(f"{base}/ready").json()
        assert after["torch_loaded"] is False  # start-up and /predict never import torch
        assert cold_start < 30  # generous on a busy CI machine; the benchmark reports it
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    store = PredictionStore(f"sqlite:///{tmp_path / 'data' / 'predictions.db'}")
    rows, total = store.query(PredictionQuery())
    assert total == 3 and {r.id for r in rows} == set(ids)  # nothing lost on shutdown
    store.dispose()


class _Recorder:
    def __init__(self) -> None:
        self.events: list[PredictionEvent] = []
        self.registered = None

    def observe(self, event: PredictionEvent) -> None:
        self.events.append(event)

    def metrics(self, registry) -> None:
        from prometheus_client import Gauge

        self.registered = Gauge("visiondeck_test_drift", "a drift score", registry=registry)
        self.registered.set(0.25)


class _Broken:
    def observe(self, event: PredictionEvent) -> None:
        raise RuntimeError("observer bug")


def test_observers_see_every_prediction(make_settings) -> None:
    from fastapi.testclient import TestClient

    from visiondeck.serve.app import create_app

    recorder = _Recorder()
    app = create_app(make_settings(store=False), observers=[_Broken(), recorder])
    with TestClient(app) as client:
        response = client.post("/predict", files={"file": learnable_png("middle")},
                               data={"label": "middle"})
        assert response.status_code == 200  # a failing observer never fails a prediction
        metrics = client.get("/metrics").text
    (event,) = recorder.events
    assert event.id == response.json()["id"] and event.label == "middle"
    assert event.classes == ("left", "middle", "right")
    assert abs(event.probabilities.sum() - 1) < 1e-6
    assert event.image.width == 16 and 0 <= event.image.brightness <= 255
    assert "visiondeck_test_drift 0.25" in metrics
    assert app.state.services.observers.failures == 1


def test_keys_cli(tmp_path: Path) -> None:
    from visiondeck.cli import app
    from visiondeck.serve.api.auth import KeyRing

    runner = CliRunner()
    file = tmp_path / "keys.json"
    created = runner.invoke(app, ["keys", "create", "ci-bot", "--admin", "--file", str(file)])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    entry = KeyRing(file).verify(key)
    assert entry is not None and entry.scopes == ("predict", "admin")
    listed = runner.invoke(app, ["keys", "list", "--file", str(file)])
    assert entry.id in listed.stdout and key not in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", entry.id, "--file", str(file)]).exit_code == 0
    assert KeyRing(file).verify(key) is None
    missing = runner.invoke(app, ["keys", "revoke", "nope", "--file", str(file)])
    assert missing.exit_code == 2


def test_serve_refuses_a_bad_bundle(tmp_path: Path) -> None:
    from visiondeck.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code == 6 and "not a Bundle" in result.output
