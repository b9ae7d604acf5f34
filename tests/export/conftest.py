"""Fixtures of the export tests: one Bundle (fp32 + int8) exported from the shared tiny run.

Exported once per session; a test that changes a Bundle copies it first (`bundle_copy`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The `ExportResult` of `export_run(trained_run, int8=True)`."""
    from visiondeck.export.onnx_export import export_run

    out = tmp_path_factory.mktemp("export") / "bundle"
    return export_run(trained_run, out, int8=True, parity_images=16)


@pytest.fixture
def bundle_copy(exported, tmp_path: Path) -> Callable[..., Path]:
    """Factory: a private copy of the exported Bundle, with bundle.json keys replaced."""

    made = iter(range(1000))

    def make(**changes) -> Path:
        folder = Path(shutil.copytree(exported.path, tmp_path / f"bundle{next(made)}"))
        manifest = folder / "bundle.json"
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | changes))
        return folder

    return make
