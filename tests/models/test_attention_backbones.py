"""Attention on every backbone family: placed per family, trained, exported, explained.

DenseNet-121 + CBAM (the research scripts' model) and EfficientNet-Lite0 + CBAM (the chest
X-ray plan's) are built at 32 px (64 px for Grad-CAM), trained a few steps, exported
through the Bundle exporter's own ONNX path and parity check, and explained with Grad-CAM
on the layer the attention feeds; the other families are checked for placement and keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from visiondeck.export.bundle import InputSpec
from visiondeck.models import ModelError, create_model, gradcam_target_layer
from visiondeck.models.attention import ECA, SqueezeExcite, attention_blocks, is_attention_key
from visiondeck.models.cbam import CBAM

SIZE = 32  # training and export (the networks take any size)
CAM_SIZE = 64  # Grad-CAM: the last stage is at stride 32, so 2x2 maps that can vary


def _batch(
    n: int = 6, size: int = SIZE, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Three learnable classes (bright quadrant), as uint8 pictures and normalised tensors."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    pictures = rng.integers(0, 90, (n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        rows = slice(0, size // 2) if label == 0 else slice(size // 2, size)
        cols = slice(0, size // 2) if label != 2 else slice(size // 2, size)
        pictures[i, rows, cols] = 230
    x = torch.from_numpy(pictures).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    return x, torch.from_numpy(labels), pictures


@pytest.mark.parametrize(
    ("name", "sites", "cam_layer"),
    [
        (
            "densenet121",
            [
                "features.denseblock1_cbam",
                "features.denseblock2_cbam",
                "features.denseblock3_cbam",
                "features.denseblock4_cbam",
            ],
            "features.denseblock4_cbam",
        ),
        (
            "efficientnet_lite0",
            ["blocks.1.cbam", "blocks.2.cbam", "blocks.4.cbam", "blocks.6.cbam"],
            "blocks.6",
        ),
    ],
)
def test_cbam_backbone_trains_exports_and_explains(
    name: str, sites: list[str], cam_layer: str, tmp_path: Path
) -> None:
    from visiondeck.explain.cam import explain_batch
    from visiondeck.export.checks import parity_check
    from visiondeck.export.onnx_export import _to_onnx

    torch.manual_seed(0)
    model = create_model(name, 3, attention="cbam")
    assert [n for n, _ in attention_blocks(model)] == sites
    assert all(isinstance(b, CBAM) for _, b in attention_blocks(model))

    # a few training steps reach the attention weights and lower the loss on the batch
    x, y, _ = _batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    block = dict(attention_blocks(model))[sites[-1]]
    before = block.spatial.conv.weight.detach().clone()
    model.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert block.channel.mlp[0].weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert not torch.equal(block.spatial.conv.weight, before)

    # the Bundle exporter's ONNX path, and its parity check, on the trained network
    model.eval()
    spec = InputSpec(SIZE, 3, "stretch", (0.5,) * 3, (0.5,) * 3)
    notes: list[str] = []
    used = _to_onnx(model, spec, tmp_path / "model.onnx", "torchscript", notes)
    assert used == "torchscript" and notes == []
    parity = parity_check(model, tmp_path / "model.onnx", x[:3].numpy(), "test")
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0

    # Grad-CAM finds a layer behind the last attention block, and its maps vary
    layer = gradcam_target_layer(model)
    assert any(m is block for m in layer.modules())
    _, _, larger = _batch(2, CAM_SIZE)
    cam_spec = InputSpec(CAM_SIZE, 3, "stretch", (0.5,) * 3, (0.5,) * 3)
    explanations = explain_batch(model, list(larger), cam_spec)
    assert {e.target_layer_name for e in explanations} == {cam_layer}
    for e in explanations:
        assert e.heatmap.shape == (CAM_SIZE, CAM_SIZE) and np.isfinite(e.heatmap).all()
        assert float(np.ptp(e.heatmap)) > 0.0


@pytest.mark.parametrize(
    ("name", "count", "kinds"),
    [
        ("resnet18", 4, ("cbam",)),
        ("tv:resnet18", 4, ("cbam", "se", "eca")),
        ("tv:densenet121", 4, ("cbam",)),
        ("efficientnet_b0", 4, ("cbam",)),
        ("tv:efficientnet_b0", 7, ("cbam",)),
        ("mobilenetv3_small_100", 4, ("cbam", "se", "eca")),
        ("tv:mobilenet_v3_large", 1, ("cbam",)),
        ("convnext_tiny", 4, ("cbam",)),
        ("simple_cnn", 3, ("cbam", "se", "eca")),
        ("resnet_small_t", 3, ("se", "eca")),
    ],
)
def test_every_family_keeps_its_keys_and_gets_blocks(
    name: str, count: int, kinds: tuple[str, ...]
) -> None:
    plain = set(create_model(name, 3).state_dict())
    classes = {"cbam": CBAM, "se": SqueezeExcite, "eca": ECA}
    for kind in kinds:
        model = create_model(name, 3, attention=kind).eval()
        blocks = attention_blocks(model)
        assert len(blocks) == count and all(isinstance(b, classes[kind]) for _, b in blocks)
        keys = set(model.state_dict())
        if not name.startswith(("simple_cnn", "resnet_small")):
            # added, never wrapped: every key of the plain network is still there unchanged
            assert plain <= keys
        assert all(is_attention_key(k) for k in keys - plain)
        out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 3) and torch.isfinite(out).all()
    # the CAM layer's output has passed the last attention block
    last = attention_blocks(model)[-1][1]
    layer = gradcam_target_layer(model)
    seen: list[bool] = []
    hook = last.register_forward_hook(lambda *_: seen.append(True))
    hook2 = layer.register_forward_hook(lambda *_: seen.append(False))
    model.eval()(torch.randn(1, 3, 32, 32))
    hook.remove()
    hook2.remove()
    assert seen[0] is True  # the attention block runs before (or inside) the CAM layer


def test_attention_keys_are_told_from_the_backbones_own_se() -> None:
    # EfficientNet-B0 has its own squeeze-excitation (blocks.N.M.se.*): not ours
    assert not is_attention_key("blocks.1.0.se.conv_reduce.weight")
    assert is_attention_key("blocks.1.se_attention.reduce.weight")
    assert is_attention_key("features.denseblock1_cbam.channel.mlp.0.weight")
    assert is_attention_key("layer4.cbam.spatial.conv.weight")


def test_eca_kernel_follows_the_papers_rule() -> None:
    # k = |log2(C)/2 + 1/2| rounded up to odd: 3 for 64 channels, 5 for 256 and 512
    assert ECA(64).conv.kernel_size == (3,)
    assert ECA(256).conv.kernel_size == (5,)
    assert ECA(512).conv.kernel_size == (5,)
    x = torch.randn(2, 64, 4, 4)
    eca = ECA(64)
    gate = torch.sigmoid(eca.conv(x.mean(dim=(2, 3))[:, None, :]))[:, 0, :, None, None]
    torch.testing.assert_close(eca(x), x * gate)


def test_transformers_are_refused_with_a_hint() -> None:
    with pytest.raises(ModelError, match="not supported for vit_tiny") as info:
        create_model("vit_tiny_patch16_224", 3, attention="cbam")
    assert "model.attention=none" in info.value.hint
    with pytest.raises(ModelError, match="unknown attention"):
        create_model("simple_cnn", 3, attention="bam")
