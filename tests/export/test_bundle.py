"""The Bundle reader: round trip, validation, preparation, and no torch on its import path."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.factories import pattern, png_bytes
from visiondeck.data.transforms import normalize
from visiondeck.export.bundle import (
    Bundle,
    BundleError,
    Calibration,
    load_bundle,
    softmax,
    write_bundle_json,
)
from visiondeck.imaging import ImageDecodeError, decode_image, resize_image


def _info(**changes) -> dict:
    info = {
        "name": "demo", "architecture": "simple_cnn",
        "model": {"name": "simple_cnn"},
        "classes": ["cat", "dog", "fox"],
        "input": {"image_size": 8, "channels": 3, "resize": "letterbox",
                  "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
                  "max_bytes": 100_000, "max_pixels": 1_000_000},
        "calibration": {"temperature": 2.0, "reject": None, "decision_threshold": None},
        "metrics": {}, "variants": {"fp32": {"file": "model.onnx", "bytes": 4}},
    }
    info.update(changes)
    return info


def _make(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "weights.safetensors").write_bytes(b"{}")
    write_bundle_json(folder, _info(**changes))
    return folder


def test_round_trip_keeps_every_key(tmp_path: Path) -> None:
    folder = _make(tmp_path / "b", reference={"brightness": [1, 2]})
    bundle = load_bundle(folder)
    assert bundle.classes == ["cat", "dog", "fox"]
    assert bundle.input.image_size == 8 and bundle.input.mode == "RGB"
    assert bundle.input.limits.max_bytes == 100_000
    assert bundle.calibration.temperature == 2.0
    assert bundle.onnx_path() == folder / "model.onnx"
    assert bundle.info["reference"] == {"brightness": [1, 2]}  # extra keys survive
    assert bundle.info["format"] == "visiondeck.bundle" and bundle.info["created_at"].endswith("Z")
    # the bundle.json path and a loaded Bundle are accepted too
    assert load_bundle(folder / "bundle.json").classes == bundle.classes
    assert load_bundle(bundle) is bundle


def test_prepare_matches_the_training_path_for_every_input_form(tmp_path: Path) -> None:
    bundle = load_bundle(_make(tmp_path / "b"))
    picture = pattern(3, 20)[:, :14]  # not square: letterbox must pad
    data = png_bytes(picture)
    (tmp_path / "p.png").write_bytes(data)
    expected = normalize(resize_image(decode_image(data).array, 8, "letterbox"),
                         bundle.input.mean, bundle.input.std)
    assert expected.shape == (3, 8, 8) and expected.dtype == np.float32
    for form in (data, tmp_path / "p.png", str(tmp_path / "p.png"), picture,
                 Image.fromarray(picture), np.dstack([picture, np.full(picture.shape[:2], 255,
                                                                          np.uint8)])):
        np.testing.assert_array_equal(bundle.prepare(form), expected)


def test_prepare_grayscale_from_rgb_and_other_pil_modes(tmp_path: Path) -> None:
    bundle = load_bundle(_make(tmp_path / "b", input={
        "image_size": 8, "channels": 1, "resize": "stretch", "mean": [0.5], "std": [0.5]}))
    picture = pattern(4, 8)
    via_decoder = bundle.prepare(png_bytes(picture))
    assert via_decoder.shape == (1, 8, 8)
    np.testing.assert_array_equal(bundle.prepare(picture), via_decoder)
    cmyk = Image.fromarray(picture).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, format="TIFF")
    np.testing.assert_array_equal(bundle.prepare(cmyk), bundle.prepare(buffer.getvalue()))


def test_prepare_refuses_bad_input(tmp_path: Path) -> None:
    bundle = load_bundle(_make(tmp_path / "b"))
    with pytest.raises(ImageDecodeError):
        bundle.prepare(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="above the limit"):  # the bundle's max_bytes
        bundle.prepare(png_bytes(np.random.default_rng(0).integers(0, 256, (400, 400, 3),
                                                                    dtype=np.uint8)))
    big = tmp_path / "big.png"  # the cap holds for paths too (they are read with a tight one)
    big.write_bytes(png_bytes(np.random.default_rng(1).integers(0, 256, (400, 400, 3),
                                                                 dtype=np.uint8)))
    with pytest.raises(ImageDecodeError, match="above the limit"):
        bundle.prepare(big)
    os.mkfifo(tmp_path / "pipe.png")  # never read (it would block): refused as not a file
    with pytest.raises(ImageDecodeError, match="not a regular file"):
        bundle.prepare(tmp_path / "pipe.png")
    with pytest.raises(FileNotFoundError):
        bundle.prepare(tmp_path / "missing.png")
    with pytest.raises(TypeError):
        bundle.prepare(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        bundle.prepare(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda p: (p / "bundle.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "bundle.json").write_text("[1, 2]"), "top level"),
    (lambda p: _edit(p, format="something.else"), "format must be"),
    (lambda p: _edit(p, format_version=99), "format_version 99"),
    (lambda p: _edit(p, classes=["only"]), "at least two"),
    (lambda p: _edit(p, classes=["a", "a", "b"]), "unique"),
    (lambda p: _edit(p, input={"image_size": 8, "channels": 2, "resize": "stretch",
                               "mean": [0.5], "std": [0.5]}), "channels"),
    (lambda p: _edit(p, calibration={"temperature": 0}), "temperature"),
    (lambda p: _edit(p, variants={"fp32": {"file": "../../etc/passwd.onnx"}}), "plain .onnx"),
    (lambda p: (p / "model.onnx").unlink(), "missing model.onnx"),
    (lambda p: (p / "weights.safetensors").unlink(), "missing weights.safetensors"),
    (lambda p: (p / "bundle.json").unlink(), "no bundle.json"),
])
def test_refuses_broken_bundles(tmp_path: Path, mutate, message: str) -> None:
    folder = _make(tmp_path / "b")
    mutate(folder)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(folder)
    assert info.value.hint and info.value.exit_code == 6


def _edit(folder: Path, **changes) -> None:
    path = folder / "bundle.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_write_refuses_what_it_could_not_read_back(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="classes"):
        write_bundle_json(tmp_path, _info(classes="cat,dog"))
    assert not (tmp_path / "bundle.json").exists()


def test_missing_int8_variant_is_a_clear_error(tmp_path: Path) -> None:
    bundle = load_bundle(_make(tmp_path / "b"))
    with pytest.raises(BundleError, match="no 'int8' model") as info:
        bundle.onnx_path("int8")
    assert "--int8" in (info.value.hint or "")


def test_calibration_rules() -> None:
    logits = np.array([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    probs = softmax(logits, 2.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] < softmax(logits)[0, 0]  # a temperature above 1 softens
    by_prob = Calibration.from_dict({"temperature": 1.0,
                                     "reject": {"method": "max_prob", "threshold": 0.5}})
    assert by_prob.unknown(logits, by_prob.probabilities(logits)).tolist() == [False, True]
    by_energy = Calibration.from_dict({"reject": {"method": "energy", "threshold": -2.0}})
    assert by_energy.unknown(logits, by_energy.probabilities(logits)).tolist() == [False, True]
    binary = Calibration.from_dict(
        {"decision_threshold": {"positive_class": "sick", "threshold": 0.2}}, ["healthy", "sick"])
    p = np.array([[0.75, 0.25], [0.9, 0.1]])
    assert binary.decide(p, ["healthy", "sick"]).tolist() == [1, 0]
    assert Calibration().decide(p, ["healthy", "sick"]).tolist() == [0, 0]


def test_bundle_and_predictor_import_without_torch() -> None:
    """The serving path: importing them with torch (and onnx) blocked must work."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'torchvision', 'timm', 'lightning'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import visiondeck.export.bundle, visiondeck.export.predictor\n"
        "from visiondeck import Predictor, load_bundle\n"
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime must load on first use'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_bundle_is_a_dataclass_with_path(tmp_path: Path) -> None:
    bundle = load_bundle(_make(tmp_path / "b"))
    assert isinstance(bundle, Bundle) and bundle.path == tmp_path / "b"
    assert bundle.name == "demo" and bundle.architecture == "simple_cnn"
