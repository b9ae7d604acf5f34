"""Fixtures for the model tests: empty weight caches and no network, per test.

Each test sees its own empty Hugging Face and torch hub caches and `HF_HUB_OFFLINE=1`, so
the results do not depend on what happens to be downloaded on the machine running them, and
nothing ever waits on a network.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    hf = tmp_path / "hf-hub"
    torch_home = tmp_path / "torch-home"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VISIONDECK_OFFLINE", "1")
    return {"hf": hf, "torch_hub": torch_home / "hub"}

