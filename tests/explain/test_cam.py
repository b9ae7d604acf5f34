"""Grad-CAM on real networks: shapes, layers, methods, Bundles, and a localisation test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_grad_cam  # noqa: F401  (declared in the explain extra: missing fails)

from tests.explain.helpers import corner_task, run_images, weights_bundle


def test_explain_image_on_the_trained_run(trained_run: Path) -> None:
    from visiondeck.explain import explain_image, load_explainable
    from visiondeck.explain.files import load_model_image

    loaded = load_explainable(trained_run)
    picture = load_model_image(run_images(trained_run, "right", 1)[0], loaded.spec)
    result = explain_image(loaded.model, picture, loaded.spec)
    assert result.heatmap.shape == (16, 16) and result.heatmap.dtype == np.float32
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    assert result.overlay.shape == (16, 16, 3) and result.overlay.dtype == np.uint8
    assert result.target_layer_name == "stages.2"  # simple_cnn's last conv block
    assert result.class_index == result.predicted_index == int(np.argmax(result.logits))
    other = explain_image(loaded.model, picture, loaded.spec, method="gradcam++",
                          target_layer="stages.1", class_index=0)
    assert other.target_layer_name == "stages.1" and other.class_index == 0
    assert not loaded.model.training  # left in eval mode


def test_unknown_layer_or_method_is_a_clear_error(trained_run: Path) -> None:
    from visiondeck.explain import ExplainError, explain_image, load_explainable

    loaded = load_explainable(trained_run)
    picture = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ExplainError, match="no layer") as info:
        explain_image(loaded.model, picture, loaded.spec, target_layer="nope.3")
    assert "stages" in (info.value.hint or "")
    with pytest.raises(ExplainError, match="unknown method"):
        explain_image(loaded.model, picture, loaded.spec, method="magic")


@pytest.mark.parametrize(("name", "channels", "attention", "layer"), [
    ("simple_cnn", 1, "cbam", "stages.2"),
    ("resnet_small_t", 3, "cbam", "stages.2"),
    ("efficientnet_lite0", 3, "none", "blocks.6"),
])
def test_every_architecture_gets_a_default_layer(name: str, channels: int, attention: str,
                                                 layer: str) -> None:
    from visiondeck.data.dataset import PrepareSpec
    from visiondeck.explain import explain_image
    from visiondeck.models import create_model

    model = create_model(name, 3, in_chans=channels, attention=attention).eval()
    spec = PrepareSpec(32, channels, "stretch", (0.5,), (0.5,))
    picture = np.random.default_rng(0).integers(0, 256, (40, 40, channels), dtype=np.uint8)
    result = explain_image(model, picture, spec, method="eigencam")  # resized to 32
    assert result.heatmap.shape == (32, 32)
    assert result.overlay.shape == (32, 32, 3)  # colour even for a gray input
    assert result.target_layer_name == layer


def test_a_bundle_folder_rebuilds_the_same_network(trained_run: Path, tmp_path: Path) -> None:
    import torch

    from visiondeck.explain import load_explainable

    run = load_explainable(trained_run)
    bundle = load_explainable(weights_bundle(trained_run, tmp_path / "bundle"))
    assert bundle.kind == "bundle" and bundle.classes == run.classes
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(run.model(x), bundle.model(x))


def test_heatmap_mass_falls_on_the_object() -> None:
    """The class is decided by a bright square in one quadrant: Grad-CAM must point there."""
    import torch

    from visiondeck.data.dataset import PrepareSpec
    from visiondeck.data.transforms import normalize
    from visiondeck.explain import explain_batch
    from visiondeck.models import create_model

    torch.manual_seed(0)
    size = 32
    objects, _ = corner_task(64, size, 1, with_object=True)
    empty, _ = corner_task(64, size, 2, with_object=False)
    x = torch.from_numpy(np.stack([normalize(p, (0.5,), (0.5,)) for p in objects + empty]))
    y = torch.tensor([0] * 64 + [1] * 64)
    model = create_model("simple_cnn", 2)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        batch = torch.randint(0, len(y), (32,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    spec = PrepareSpec(size, 3, "stretch", (0.5,), (0.5,))
    tests, quadrants = corner_task(16, size, 3, with_object=True)
    half = size // 2
    for method in ("gradcam", "gradcam++"):
        explained = explain_batch(model, tests, spec, method=method, class_indices=[0] * 16)
        shares = []
        for result, q in zip(explained, quadrants, strict=True):
            rows, cols = slice((q // 2) * half, (q // 2 + 1) * half), slice(
                (q % 2) * half, (q % 2 + 1) * half)
            shares.append(result.heatmap[rows, cols].sum() / max(result.heatmap.sum(), 1e-9))
        # a quarter of the picture would get 25 % of the mass by chance
        assert np.mean(shares) > 0.6, (method, np.round(shares, 2))
        assert np.median(shares) > 0.5, (method, np.round(shares, 2))
