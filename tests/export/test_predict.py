"""`Predictor` and `visiondeck predict`: every input form, bad files, calibration, formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.factories import png_bytes
from visiondeck.cli import app
from visiondeck.export.predictor import PredictFailure, Prediction, Predictor
from visiondeck.imaging import ImageDecodeError

CLASSES = ["left", "middle", "right"]


def bright(cls: str, size: int = 16, seed: int = 0) -> np.ndarray:
    """An image of the learnable task: the bright region says the class."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    cols = {"left": slice(0, size // 3), "middle": slice(size // 3, 2 * size // 3),
            "right": slice(2 * size // 3, size)}[cls]
    image[:, cols] = 230
    return image


@pytest.fixture
def images(tmp_path: Path, trained_run: Path) -> Path:
    """Real images of the trained task (from its data folder), one corrupt, one text file."""
    source = trained_run.parent.parent / "images"
    root = tmp_path / "inputs"
    for cls in CLASSES:
        (root / cls).mkdir(parents=True)
        for i, path in enumerate(sorted((source / cls).glob("*.png"))[:3]):
            (root / cls / f"{cls}_{i}.png").write_bytes(path.read_bytes())
    (root / "middle" / "broken.png").write_bytes(png_bytes(bright("left"))[:60])
    (root / "notes.txt").write_text("not a picture")
    return root


def test_every_input_form_gives_the_same_answer(exported, images: Path) -> None:
    predictor = Predictor(exported.path)
    path = images / "left" / "left_0.png"
    data = path.read_bytes()
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    answers = predictor.predict([path, str(path), data, Image.open(path), array])
    assert all(isinstance(a, Prediction) for a in answers)
    assert {a.label for a in answers} == {"left"}
    assert len({a.probability for a in answers}) == 1
    assert answers[0].source == str(path) and answers[2].source is None
    # a single input (not a list) and a 4-D batch of arrays are accepted too
    assert predictor.predict(data)[0].label == "left"
    assert [a.label for a in predictor.predict(np.stack([array, array]))] == ["left", "left"]


def test_predictions_follow_the_pictures(exported) -> None:
    predictor = Predictor(exported.path, top_k=3)
    answers = predictor.predict([bright(c, seed=i) for i, c in enumerate(CLASSES * 3)])
    correct = sum(a.label == c for a, c in zip(answers, CLASSES * 3, strict=True))
    assert correct >= 8
    for a in answers:
        assert a.topk[0][0] == a.label and len(a.topk) == 3
        assert sum(p for _, p in a.topk) == pytest.approx(1.0, abs=1e-4)
        assert a.index == CLASSES.index(a.label) and not a.unknown


def test_bad_input_raises_or_is_reported(exported) -> None:
    predictor = Predictor(exported.path)
    with pytest.raises(ImageDecodeError):
        predictor.predict([bright("left"), b"\x89PNG\r\n\x1a\n broken"])
    out = predictor.predict([bright("left"), b"garbage", np.zeros((4, 4), np.float64)],
                            errors="report")
    assert [type(o) for o in out] == [Prediction, PredictFailure, PredictFailure]
    assert out[1].problem == "not_an_image" and out[2].problem == "invalid_input"


def test_int8_variant_agrees_with_float(exported) -> None:
    pictures = [bright(c, seed=7) for c in CLASSES]
    fp32 = Predictor(exported.path).predict(pictures)
    int8 = Predictor(exported.path, variant="int8").predict(pictures)
    assert [a.label for a in fp32] == [a.label for a in int8]


def test_unknown_flag_and_temperature_follow_the_bundle(exported, bundle_copy) -> None:
    picture = bright("right", seed=3)
    base = Predictor(exported.path).predict(picture)[0]
    strict = bundle_copy(calibration={"temperature": 1.0, "decision_threshold": None,
                                      "reject": {"method": "max_prob", "threshold": 1.01}})
    assert Predictor(strict).predict(picture)[0].unknown
    lenient = bundle_copy(calibration={"temperature": 1.0, "decision_threshold": None,
                                       "reject": {"method": "max_prob", "threshold": 0.0}})
    assert not Predictor(lenient).predict(picture)[0].unknown
    hot = bundle_copy(calibration={"temperature": 50.0, "reject": None,
                                   "decision_threshold": None})
    softened = Predictor(hot).predict(picture)[0]
    assert softened.label == base.label and softened.probability < base.probability


def test_streaming_keeps_order_and_survives_bad_files(exported, images: Path) -> None:
    files = sorted(str(p) for p in images.rglob("*.png"))
    files.insert(4, str(images / "gone.png"))
    predictor = Predictor(exported.path)
    pooled = list(predictor.predict_files(files, batch_size=3, workers=2))
    inline = list(predictor.predict_files(files, batch_size=3, workers=1))
    assert [r.source for r in pooled] == files == [r.source for r in inline]
    failed = {Path(r.source).name: r.problem for r in pooled if not r.ok}
    assert failed == {"gone.png": "missing", "broken.png": "truncated"}
    assert [getattr(r, "label", None) for r in pooled] == [getattr(r, "label", None)
                                                         for r in inline]
    # a non-image met while walking a folder is dropped; named explicitly, it is reported
    text, picture = str(images / "notes.txt"), files[0]
    walked = list(predictor.predict_files([text, picture], skip_non_images={text}))
    assert [r.source for r in walked] == [picture]
    named = list(predictor.predict_files([text, picture]))
    assert [r.ok for r in named] == [False, True] and named[0].problem == "not_an_image"


def _run(*args: str):
    return CliRunner().invoke(app, ["predict", *args])


def test_predict_command_jsonl_with_folder_glob_and_bad_files(exported, images: Path) -> None:
    result = _run(str(exported.path), str(images / "left"), str(images / "r*" / "*.png"),
                  str(images / "middle" / "broken.png"), str(images / "nothing-*.png"),
                  "--format", "jsonl", "--top-k", "2")
    assert result.exit_code == 3, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    good = [r for r in rows if "label" in r]
    bad = {Path(r["source"]).name: r["error"] for r in rows if "error" in r}
    assert sorted(Path(r["source"]).name for r in good) == sorted(
        [f"left_{i}.png" for i in range(3)] + [f"right_{i}.png" for i in range(3)])
    assert bad == {"broken.png": "truncated", "nothing-*.png": "no_match"}
    assert all(len(r["topk"]) == 2 for r in good)
    assert sum(r["label"] == Path(r["source"]).name.split("_")[0] for r in good) >= 5
    assert "6 predicted, 2 failed" in result.output


def test_predict_command_csv_walks_folders_recursively(exported, images: Path) -> None:
    result = _run(str(exported.path), str(images), "--format", "csv", "--top-k", "3")
    assert result.exit_code == 3  # the broken PNG; notes.txt is skipped, not an image
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 10
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and errors[0]["source"].endswith("broken.png")
    assert all(r["top3_label"] for r in rows if not r["error"])


def test_predict_command_table_and_clean_exit(exported, images: Path) -> None:
    result = _run(str(exported.path), str(images / "left" / "left_0.png"), "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "left_0.png" in result.output and "left" in result.output
    assert "1 predicted, 0 failed" in result.output


def test_predict_command_writes_gradcam_overlays(exported, images: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "cams"
    result = _run(str(exported.path), str(images / "right" / "right_1.png"), "--gradcam",
                  str(out))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.glob("*.png"))
    assert len(written) == 1 and written[0].startswith("right_1.")
    assert Image.open(out / written[0]).size[0] > 16  # enlarged side-by-side overlay


def test_predict_command_refuses_a_broken_bundle(tmp_path: Path, images: Path) -> None:
    (tmp_path / "bundle.json").write_text("{")
    result = _run(str(tmp_path), str(images))
    assert result.exit_code == 6
    assert "not valid JSON" in result.output
