"""`visiondeck explain` writes overlays, for runs and Bundles, and reports bad files."""

from __future__ import annotations

from pathlib import Path

import pytorch_grad_cam  # noqa: F401  (declared in the explain extra: missing fails)
from PIL import Image
from typer.testing import CliRunner

from tests.explain.helpers import run_images, weights_bundle


def test_explain_command_writes_overlays(trained_run: Path, tmp_path: Path) -> None:
    from visiondeck.cli import app

    images = run_images(trained_run, "left", 2)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(trained_run), *map(str, images),
                                      "--method", "gradcam++", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(out.glob("*.png"))
    assert len(written) == 2 and "stages.2" in result.output
    width, height = Image.open(written[0]).size
    assert width == 2 * height  # input | overlay side by side


def test_explain_bundle_with_a_bad_file(trained_run: Path, tmp_path: Path) -> None:
    from visiondeck.cli import app

    bundle = weights_bundle(trained_run, tmp_path / "bundle")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    good = run_images(trained_run, "middle", 1)[0]
    result = CliRunner().invoke(app, ["explain", str(bundle), str(good), str(bad),
                                      "--class", "middle", "--out", str(tmp_path / "o")])
    assert result.exit_code == 4, result.output  # one file failed, the other was written
    assert len(list((tmp_path / "o").glob("*.png"))) == 1
    unknown = CliRunner().invoke(app, ["explain", str(bundle), str(good), "--class", "cat"])
    assert unknown.exit_code == 2 and "unknown class" in unknown.output
