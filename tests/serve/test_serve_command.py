"""`visiondeck serve` takes its settings from options, else the environment, else defaults.

Containers configure the server with VISIONDECK_* variables; an option's built-in default
must not silently overwrite them. It also gives the server one OpenBLAS thread unless told
otherwise. uvicorn.run is replaced so no port is bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from visiondeck.cli import app


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.update(kwargs))
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
    monkeypatch.setenv("VISIONDECK_HOST", "0.0.0.0")
    monkeypatch.setenv("VISIONDECK_PORT", "8123")
    monkeypatch.setenv("VISIONDECK_WORKERS", "2")
    result = CliRunner().invoke(app, ["serve", str(serve_bundle)])
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"], started["workers"]) == ("0.0.0.0", 8123, 2)


def test_options_win_over_the_environment(serve_bundle: Path, started: dict[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONDECK_PORT", "8123")
    result = CliRunner().invoke(app, ["serve", str(serve_bundle), "--port", "9001"])
    assert result.exit_code == 0, result.output
    assert started["port"] == 9001


def test_defaults_when_neither_is_given(serve_bundle: Path, started: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["serve", str(serve_bundle)])
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"], started["workers"]) == ("127.0.0.1", 8000, 1)


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
