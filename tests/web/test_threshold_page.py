"""The Predict page applies the Bundle's operating threshold, not the bare argmax.

The Bundle is built by hand so its answer is known in advance: a one-logit binary
`simple_cnn` whose head weights are zero and whose bias is 2, so every picture gets
p(right) = sigmoid(2) = 0.881 (argmax: "right"), and a decision threshold of 0.94 on
"right", so the Bundle's decision for every picture is "left".
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.conftest import LiveServer, Page, _serve, _settings
from tests.web.helpers import api_predict, done_cards, upload, write_image

P_RIGHT = 1.0 / (1.0 + math.exp(-2.0))
THRESHOLD = 0.94


def _binary_bundle(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from visiondeck.config import ModelConfig
    from visiondeck.export.bundle import write_bundle_json
    from visiondeck.models import BinaryLogit, create_model

    model = create_model("simple_cnn", 2, head="binary").eval()
    head = next(m for m in model.modules() if isinstance(m, BinaryLogit))
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(2.0)
    folder.mkdir(parents=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, 16, 16),),
        str(folder / "model.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "weights.safetensors"),
    )
    write_bundle_json(folder, {
        "name": "binary-threshold", "architecture": "simple_cnn",
        "model": ModelConfig(name="simple_cnn", head="binary").model_dump(),
        "classes": ["left", "right"],
        "input": {"image_size": 16, "channels": 3, "resize": "stretch",
                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "calibration": {"temperature": 1.0, "reject": None,
                        "decision_threshold": {"positive_class": "right",
                                               "threshold": THRESHOLD}},
        "metrics": {},
    })  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's server: the hand-made binary Bundle (overrides conftest's)."""
    from visiondeck.serve.app import create_app

    base = tmp_path_factory.mktemp("web-threshold")
    bundle = _binary_bundle(base / "bundle")
    app = create_app(_settings(bundle, base, monitor=False))
    with _serve(app) as url:
        yield LiveServer(url, app, bundle, "")
    shutil.rmtree(base, ignore_errors=True)


def test_the_page_shows_the_thresholded_decision(page: Page, tmp_path: Path) -> None:
    picture = write_image(tmp_path, "right", 5)
    truth = api_predict(page, picture.read_bytes())
    assert truth["predicted"] == "left"  # 0.881 < 0.94: the threshold overrules the argmax
    assert truth["top_k"][0]["class"] == "right"
    assert truth["top_k"][0]["probability"] == pytest.approx(P_RIGHT, abs=1e-4)
    page.open("/")
    upload(page, picture)
    card = done_cards(page, 1)[0]
    assert card.get_attribute("data-predicted") == "left"
    assert card.find_element("css selector", ".predicted").text == "left"
    bars = [e.text for e in card.find_elements("css selector", ".bar-label")]
    assert bars == ["right", "left"]  # ranked by probability, decided by the threshold
    page.open("/model-card")
    assert "right when its probability ≥ 0.94" in page.text("body")
