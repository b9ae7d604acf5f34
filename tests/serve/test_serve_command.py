"""`visiondeck serve` takes its settings from options, else the environment, else defaults.

Containers configure the server with VISIONDECK_* variables; an option's built-in default
must not silently overwrite them. It also gives the server one OpenBLAS thread unless told
otherwise, and starts uvicorn (one worker) or gunicorn's arbiter with uvicorn workers on
SO_REUSEPORT sockets (several) with the same server options. `uvicorn.run` and gunicorn's
`BaseApplication.run` are replaced so no port is bound; gunicorn's own configuration
object is read, so its setting names and validators are checked too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from gunicorn.app.base import BaseApplication
from typer.testing import CliRunner

from tests.servers import free_port
from visiondeck.cli import app
from visiondeck.cli.serve_cmd import APP_FACTORY


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """What the command started: `uvicorn` (uvicorn.run's arguments, one worker) or
    `gunicorn` (the arbiter's resolved settings and the app it would load, several)."""
    calls: dict[str, Any] = {}

    def run_uvicorn(*args: Any, **kwargs: Any) -> None:
        calls["uvicorn"] = {"app": args[0], **kwargs}

    def run_gunicorn(application: BaseApplication) -> None:
        settings = application.cfg.settings
        calls["gunicorn"] = {name: settings[name].get() for name in settings}

    monkeypatch.setattr(uvicorn, "run", run_uvicorn)
    monkeypatch.setattr(BaseApplication, "run", run_gunicorn)
    # the command writes what it resolved into os.environ for uvicorn's workers: setting
    # then deleting each name makes monkeypatch restore the real environment afterwards
    for name in ("BUNDLE", "HOST", "PORT", "WORKERS", "VARIANT", "DATABASE_URL", "DATA_DIR",
                 "STORE", "REQUIRE_API_KEY", "RATE_LIMIT", "REDIS_URL", "MAX_BATCH",
                 "MAX_WAIT_MS"):
        monkeypatch.setenv(f"VISIONDECK_{name}", "")
        monkeypatch.delenv(f"VISIONDECK_{name}")
    monkeypatch.chdir(tmp_path)
    return calls


def test_environment_settings_survive_when_options_are_left_out(
        serve_bundle: Path, started: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # several workers: the command checks that nothing listens there
    monkeypatch.setenv("VISIONDECK_HOST", "0.0.0.0")
    monkeypatch.setenv("VISIONDECK_PORT", str(port))
    monkeypatch.setenv("VISIONDECK_WORKERS", "2")
    result = CliRunner().invoke(app, ["serve", str(serve_bundle)])
    assert result.exit_code == 0, result.output
    assert (started["gunicorn"]["bind"], started["gunicorn"]["workers"]) == (
        [f"0.0.0.0:{port}"], 2)


def test_options_win_over_the_environment(serve_bundle: Path, started: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONDECK_PORT", "8123")
    result = CliRunner().invoke(app, ["serve", str(serve_bundle), "--port", "9001"])
    assert result.exit_code == 0, result.output
    assert started["uvicorn"]["port"] == 9001


def test_defaults_when_neither_is_given(serve_bundle: Path, started: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve", str(serve_bundle)])
    assert result.exit_code == 0, result.output
    assert "gunicorn" not in started  # one worker: uvicorn alone, no supervisor
    assert (started["uvicorn"]["host"], started["uvicorn"]["port"]) == ("127.0.0.1", 8000)


def test_one_worker_runs_uvicorn_with_the_server_options(serve_bundle: Path,
                                                         started: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve", str(serve_bundle), "--log-level", "warning"])
    assert result.exit_code == 0, result.output
    assert started["uvicorn"] == {
        "app": APP_FACTORY, "factory": True, "host": "127.0.0.1", "port": 8000,
        "log_level": "warning", "access_log": False, "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": 30}


def test_several_workers_run_gunicorn_with_one_socket_per_worker(
        serve_bundle: Path, started: dict[str, Any]) -> None:
    """The same server options as one worker's, and `reuse_port`: each worker binds its own
    SO_REUSEPORT socket, so the kernel spreads connections (tests/serve/test_workers.py
    shows it on a running server)."""
    port = free_port()
    result = CliRunner().invoke(app, ["serve", str(serve_bundle), "--workers", "3",
                                      "--port", str(port), "--log-level", "warning"])
    assert result.exit_code == 0, result.output
    assert "uvicorn" not in started
    cfg = started["gunicorn"]
    assert (cfg["bind"], cfg["workers"], cfg["reuse_port"]) == ([f"127.0.0.1:{port}"], 3, True)
    assert cfg["worker_class"] == "uvicorn_worker.UvicornWorker"
    assert (cfg["loglevel"], cfg["accesslog"]) == ("warning", None)
    assert (cfg["keepalive"], cfg["graceful_timeout"], cfg["timeout"]) == (5, 30, 120)
    assert cfg["control_socket_disable"] is True
    assert cfg["preload_app"] is False  # each worker builds its app after the fork


def test_several_workers_refuse_a_port_in_use(serve_bundle: Path,
                                              started: dict[str, Any]) -> None:
    """SO_REUSEPORT would let the workers share the port with another server started the
    same way; the command refuses it as a plain bind would, before starting anything."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(serve_bundle), "--workers", "2",
                                          "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "cannot listen on" in result.output and "--port" in result.output
    assert started == {}


_PROBE = """
import json, sys
import uvicorn
from visiondeck.cli import app, serve_cmd

seen = {}
set_threads = serve_cmd._one_blas_thread

def one_blas_thread():
    seen["numpy_loaded_before"] = "numpy" in sys.modules
    set_threads()

def run(*args, **kwargs):
    import numpy
    from threadpoolctl import threadpool_info
    seen["blas"] = [lib["num_threads"] for lib in threadpool_info()
                    if lib["internal_api"] == "openblas"]
    print(json.dumps(seen))

serve_cmd._one_blas_thread = one_blas_thread
uvicorn.run = run
app(["serve", sys.argv[1], "--data-dir", sys.argv[2]])
"""


def _serve_probe(bundle: Path, tmp_path: Path, **env: str) -> dict[str, Any]:
    """`visiondeck serve` in a fresh interpreter, up to the moment it starts uvicorn: was
    numpy loaded when the command set the BLAS thread count, and how many OpenBLAS threads
    numpy has once uvicorn would start."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("VISIONDECK_") and k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(bundle), str(tmp_path / "data")],
                         env={**clean, **env}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_server_gets_one_blas_thread(serve_bundle: Path, tmp_path: Path) -> None:
    """OpenBLAS reads its thread count when numpy loads: the command must set it before
    anything imports numpy (load_bundle does), and uvicorn's workers inherit it."""
    probe = _serve_probe(serve_bundle, tmp_path)
    assert probe == {"numpy_loaded_before": False, "blas": [1]}


def test_a_chosen_blas_thread_count_is_kept(serve_bundle: Path, tmp_path: Path) -> None:
    assert _serve_probe(serve_bundle, tmp_path, OPENBLAS_NUM_THREADS="2")["blas"] == [2]
