"""`visiondeck evaluate` and `visiondeck compare` exit 0 and print their tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.explain.helpers import weights_bundle


def test_evaluate_command(trained_run: Path, tmp_path: Path) -> None:
    from visiondeck.cli import app

    out = tmp_path / "ev"
    ood = tmp_path / "elsewhere"
    ood.mkdir()
    for seed in range(3):  # pictures unlike the run's: the rule is measured on them too
        noise = np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        Image.fromarray(noise).save(ood / f"noise{seed}.png")
    result = CliRunner().invoke(app, ["evaluate", str(trained_run), "--out", str(out),
                                      "--tta", "--reject", "energy", "--gradcam", "1",
                                      "--boot", "50", "--ood", str(ood)])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "temperature" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"] is True
    assert metrics["reject"]["ood_sources"]["elsewhere"] == 3
    rate = metrics["reject"]["fire_rate"]["elsewhere"]
    assert rate * 3 == pytest.approx(round(rate * 3), abs=1e-5)  # a share of three images
    assert f"elsewhere {rate:.0%}" in " ".join(result.output.split())
    assert json.loads((out / "calibration.json").read_text())["reject"]["method"] == "energy"
    wrong = CliRunner().invoke(app, ["evaluate", str(tmp_path / "no-run")])
    assert wrong.exit_code == 5 and "trained model" in " ".join(wrong.output.split())


def test_compare_command(trained_run: Path, tmp_path: Path) -> None:
    from visiondeck.cli import app

    bundle = weights_bundle(trained_run, tmp_path / "bundle")
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", str(trained_run), str(bundle), "--out",
                                      str(out), "--boot", "50"])
    assert result.exit_code == 0, result.output
    assert "McNemar" in result.output and "p = 1.0000" in result.output  # same network
    data = json.loads((out / "compare.json").read_text())
    first, second = data["models"]
    assert first["headline"]["accuracy"] == second["headline"]["accuracy"]
    assert first["parameters"] == second["parameters"] > 0
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1
