"""`visiondeck serve` takes its settings from options, else the environment, else defaults.

Containers configure the server with VISIONDECK_* variables; an option's built-in default
must not silently overwrite them. uvicorn.run is replaced so no port is bound.
"""

from __future__ import annotations

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
