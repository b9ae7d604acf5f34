"""The PyTorch network of a Bundle, rebuilt from bundle.json + weights.safetensors.

Grad-CAM, the PyTorch column of `visiondeck bench` and re-export need the network itself,
not its ONNX graph. It is rebuilt from the architecture recorded in bundle.json and the
safetensors weights: nothing is unpickled, so a Bundle from elsewhere is safe to open.
"""

from __future__ import annotations

from typing import Any

from visiondeck.export.bundle import Bundle, load_bundle
from visiondeck.export.errors import BundleError

__all__ = ["load_torch_model"]


def load_torch_model(bundle: Bundle | str, *, device: str = "cpu") -> Any:
    """The Bundle's `nn.Module` in eval mode (needs the `train` extra: torch, timm)."""
    from pydantic import ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from visiondeck.config import ModelConfig
    from visiondeck.models import from_config

    bundle = load_bundle(bundle)
    try:
        cfg = ModelConfig.model_validate(bundle.info.get("model") or {})
    except ValidationError as exc:
        raise BundleError(f"{bundle.path}/bundle.json: 'model' is not a model config ({exc})",
                          hint="re-export the run") from None
    # the architecture only: the weights come from the Bundle
    cfg = cfg.model_copy(update={"pretrained": False, "weights": None})
    model = from_config(cfg, num_classes=len(bundle.classes), in_chans=bundle.input.channels)
    try:
        state = load_file(str(bundle.weights_path), device=device)
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"cannot read {bundle.weights_path}: {exc}",
                          hint="copy the Bundle again, or re-export the run") from None
    if (bundle.info.get("pruning") or {}).get("method") == "structured":
        from visiondeck.export.prune import fit_to_state

        fit_to_state(model, state)  # channels were removed: layers take the saved shapes
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(
            f"{bundle.weights_path} does not fit {cfg.name}: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}",
            hint="the weights and bundle.json come from different exports; re-export the run",
        )
    return model.to(device).eval()
