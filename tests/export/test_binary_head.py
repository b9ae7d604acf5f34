"""The one-logit binary head end to end, and the operating threshold every consumer applies.

One tiny binary run (classes left/right of `write_learnable`, `model.head=binary`, weighted
BCE) is trained, evaluated with a gate (which chooses the operating threshold on
validation) and exported. The Bundle's ONNX model must answer two-class logits whose
softmax is the sigmoid of the head's one logit; a Bundle whose threshold flips a known
prediction must flip it in the Predictor, `visiondeck predict`, the API (both lanes),
`/explain` and the model card alike.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.factories import png_bytes, write_learnable
from visiondeck.cli import app
from visiondeck.export.predictor import Predictor
from visiondeck.models import create_model
from visiondeck.models.binary import BinaryLogit


def _picture(side: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
    region = (slice(0, 8), slice(0, 8)) if side == "left" else (slice(8, 16), slice(8, 16))
    array[region] = 230
    return array


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visiondeck.config import load_recipe
    from visiondeck.train.runner import train

    base = tmp_path_factory.mktemp("binary")
    data = write_learnable(base / "images", per_class=24)
    shutil.rmtree(data / "middle")  # two classes: left (index 0), right (index 1, positive)
    recipe = load_recipe(None, [
        f"data.source={data}", "data.image_size=16", "data.augment=none", "data.cache=memory",
        "data.num_workers=0", "data.val_fraction=0.25", "data.test_fraction=0.25",
        "model.name=simple_cnn", "model.head=binary", "train.pos_weight=2.0",
        "train.epochs=3", "train.batch_size=16", "train.lr=0.01", "tracking.enabled=false",
        f"output_dir={base / 'runs'}", "name=binary",
    ])  # fmt: skip
    before = Path.cwd()
    os.chdir(base)
    try:
        return train(recipe, progress=False).run_dir
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def binary_bundle(binary_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from visiondeck.evaluate.core import evaluate_run
    from visiondeck.export.onnx_export import export_run

    evaluate_run(binary_run, gate="sensitivity>=0.5,auc>=0.5", n_boot=50, report=False)
    out = tmp_path_factory.mktemp("binary-bundle") / "bundle"
    return export_run(binary_run, out, parity_images=8, reference_images=0).path


def _with_threshold(bundle: Path, tmp_path: Path, threshold: float, name: str) -> Path:
    folder = Path(shutil.copytree(bundle, tmp_path / name))
    manifest = folder / "bundle.json"
    info = json.loads(manifest.read_text())
    info["calibration"]["decision_threshold"] = {"positive_class": "right", "threshold": threshold}
    manifest.write_text(json.dumps(info))
    return folder


def test_binary_head_is_one_logit_answered_as_two() -> None:
    model = create_model("simple_cnn", 2, head="binary").eval()
    heads = [m for m in model.modules() if isinstance(m, BinaryLogit)]
    assert len(heads) == 1 and heads[0].weight.shape == (1, 256)
    logits = model(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(logits[:, 0], -logits[:, 1])
    z = logits[:, 1] - logits[:, 0]
    torch.testing.assert_close(torch.softmax(logits, 1)[:, 1], torch.sigmoid(z))
    with pytest.raises(Exception, match="exactly two classes"):
        create_model("simple_cnn", 3, head="binary")
    # any backbone's classifier can be made binary (timm and torchvision heads too)
    for name in ("resnet18", "tv:mobilenet_v3_small"):
        net = create_model(name, 2, head="binary").eval()
        assert sum(isinstance(m, BinaryLogit) for m in net.modules()) == 1
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_weighted_bce_is_bce_with_pos_weight() -> None:
    from visiondeck.config import TrainConfig
    from visiondeck.train.losses import BinaryCrossEntropy, binary_pos_weight, class_weights

    z = torch.tensor([2.0, -1.0, 0.5, -3.0])
    logits = torch.stack([-z / 2, z / 2], 1)
    labels = torch.tensor([1, 0, 0, 1])
    loss = BinaryCrossEntropy(pos_weight=3.0)(logits, labels)
    y = labels.float()
    by_hand = -(3.0 * y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z)))
    torch.testing.assert_close(loss, by_hand.mean())
    # balance=weights gives n_neg / n_pos from the training labels
    weights = class_weights([0] * 30 + [1] * 10, 2)
    cfg = TrainConfig(balance="weights")
    assert binary_pos_weight(cfg, weights) == pytest.approx(3.0)
    assert binary_pos_weight(TrainConfig(pos_weight=1.5), weights) == 1.5
    assert binary_pos_weight(TrainConfig(), weights) is None


def test_the_exported_model_answers_the_sigmoid_of_its_one_logit(binary_bundle: Path) -> None:
    from visiondeck.export.torch_model import load_torch_model

    predictor = Predictor(binary_bundle)
    batch = np.stack(
        [
            predictor.bundle.prepare(_picture(s, i))
            for i, s in enumerate(["left", "right", "left", "right"])
        ]
    )
    logits = predictor.logits(batch)
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1], rtol=0, atol=1e-6)
    network = load_torch_model(binary_bundle)
    head = next(m for m in network.modules() if isinstance(m, BinaryLogit))
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    with torch.no_grad():
        network(torch.from_numpy(batch))
    hook.remove()
    with torch.no_grad():
        z = torch.nn.functional.linear(captured[0], head.weight, head.bias)[:, 0].double().numpy()
    temperature = predictor.bundle.calibration.temperature
    expected = 1.0 / (1.0 + np.exp(-z / temperature))
    answers = predictor.predict_prepared(batch, top_k=2)
    got = [dict(a.topk)["right"] for a in answers]
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_the_operating_threshold_travels_from_validation_to_the_bundle(
    binary_run: Path, binary_bundle: Path
) -> None:
    metrics = json.loads((binary_run / "evaluation" / "metrics.json").read_text())
    gate = metrics["gate"]
    assert gate["threshold"]["chosen_on"] == "val"
    assert gate["threshold"]["positive_class"] == "right"
    assert gate["passed"] is True
    info = json.loads((binary_bundle / "bundle.json").read_text())
    assert info["model"]["head"] == "binary"
    assert info["calibration"]["decision_threshold"] == {
        "positive_class": "right",
        "threshold": gate["threshold"]["threshold"],
    }


def test_every_consumer_applies_the_bundle_threshold(binary_bundle: Path, tmp_path: Path) -> None:
    from visiondeck.serve.app import create_app
    from visiondeck.serve.settings import ServeSettings

    picture = _picture("right", seed=7)
    p = dict(Predictor(binary_bundle).predict(picture, top_k=2)[0].topk)["right"]
    assert 0.0 < p < 1.0
    # a threshold just above p(right) turns this "right" into "left"; just below keeps it
    strict = _with_threshold(binary_bundle, tmp_path, (p + 1.0) / 2, "strict")
    lenient = _with_threshold(binary_bundle, tmp_path, p / 2, "lenient")
    assert Predictor(lenient).predict(picture)[0].label == "right"
    assert Predictor(strict).predict(picture)[0].label == "left"

    file = tmp_path / "right.png"
    file.write_bytes(png_bytes(picture))
    for folder, expected in ((lenient, "right"), (strict, "left")):
        result = CliRunner().invoke(app, ["predict", str(folder), str(file), "--format", "jsonl"])
        assert result.exit_code == 0, result.output
        row = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("{")))
        assert row["label"] == expected

        for lane in (True, False):
            settings = ServeSettings(
                bundle=str(folder),
                data_dir=tmp_path / f"data-{lane}",
                watch_interval_s=0,
                preprocess_threads=1,
                intra_op_threads=1,
                fast_lane=lane,
            )
            with TestClient(create_app(settings)) as client:
                body = client.post("/predict", files={"file": ("x.png", png_bytes(picture))})
                assert body.status_code == 200, body.text
                assert body.json()["predicted"] == expected
                if lane:
                    explained = client.post("/explain", files={"file": png_bytes(picture)})
                    assert explained.json()["class"] == expected
                    card = client.get("/model-card").text
                    assert "right when its probability" in card
