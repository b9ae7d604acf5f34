"""Fixtures of the service tests: one Bundle exported from the shared tiny run, and apps.

The Bundle is exported once per session with `export_run` (the real exporter); tests that
change a Bundle copy it first. Each test builds its own app with `create_app(settings)`,
with its SQLite file and key file under the test's tmp_path.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.factories import png_bytes
from tests.servers import free_port


@pytest.fixture(scope="session")
def serve_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Bundle (16 px RGB, classes left/middle/right) exported from the shared run."""
    from visiondeck.export.onnx_export import export_run

    out = tmp_path_factory.mktemp("serve-bundle") / "bundle"
    return export_run(trained_run, out, parity_images=8).path


@pytest.fixture
def bundle_copy(serve_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the Bundle that a test may change."""
    return Path(shutil.copytree(serve_bundle, tmp_path / "bundle"))


@pytest.fixture
def serve_lane() -> bool:
    """Whether POST /predict is answered by the fast path (serve/api/fast_predict.py, the
    default) or the FastAPI route; modules that must hold for both override this with a parametrized
    fixture (test_api.py, test_inputs.py)."""
    return True


@pytest.fixture
def make_settings(serve_bundle: Path, tmp_path: Path, serve_lane: bool) -> Callable[..., object]:
    from visiondeck.serve.settings import ServeSettings

    def make(**changes):
        values = {"bundle": str(serve_bundle), "data_dir": tmp_path / "data",
                  "watch_interval_s": 0, "preprocess_threads": 2, "intra_op_threads": 1,
                  "fast_lane": serve_lane}
        values.update(changes)
        return ServeSettings(**values)

    return make


@contextmanager
def started_clients() -> Iterator[Callable[..., TestClient]]:
    """`start(settings)`: an app started (lifespan run) behind a TestClient; every client
    started is closed on leaving. The one home of the client fixtures below and beside."""
    from visiondeck.serve.app import create_app

    clients: list[TestClient] = []

    def start(settings) -> TestClient:
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield start
    finally:
        for client in clients:
            client.__exit__(None, None, None)


@pytest.fixture
def make_client(make_settings) -> Iterator[Callable[..., TestClient]]:
    """Factory: a started app (lifespan run) behind a TestClient; closed after the test."""
    with started_clients() as start:
        yield lambda settings=None, **changes: start(settings or make_settings(**changes))


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def learnable_png(cls: str, size: int = 16, seed: int = 0) -> bytes:
    """An image of one class of `write_learnable` (the bright quadrant says which)."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    half = size // 2
    region = {"left": (slice(0, half), slice(0, half)),
              "middle": (slice(half // 2, half // 2 + half), slice(half // 2, half // 2 + half)),
              "right": (slice(half, size), slice(half, size))}[cls]
    array[region] = 230
    return png_bytes(array)


@pytest.fixture
def live_server(make_settings) -> Iterator[Callable[..., int]]:
    """Factory: the app under a real uvicorn on loopback (a thread of this process), with
    the given settings; answers the port. Stopped after the test."""
    import uvicorn

    from visiondeck.serve.app import create_app

    servers: list[tuple[object, threading.Thread]] = []

    def start(**changes) -> int:
        settings = make_settings(**changes)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1",
                                               port=port, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "no server started"
            time.sleep(0.02)
        return port

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)
