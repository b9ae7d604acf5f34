"""A network to explain (or evaluate) from a run folder or a Bundle folder.

A run keeps its network in `model/` (read by `train.artifacts.load_trained`); a Bundle keeps
it in `weights.safetensors` beside bundle.json, whose "model", "classes" and "input" say how
to rebuild it. Both become the same `ExplainableModel`, so `visiondeck explain` and
`visiondeck compare` accept either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondeck.explain.cam import SpecLike

__all__ = ["ExplainableModel", "is_bundle", "load_explainable", "load_model_from_bundle"]


@dataclass
class ExplainableModel:
    """A torch network in eval mode, its class names and how its input is prepared."""

    model: Any  # torch.nn.Module
    classes: list[str]
    spec: SpecLike  # PrepareSpec (run) or InputSpec (Bundle)
    source: Path
    kind: str  # "run" | "bundle"
    name: str
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def architecture(self) -> str:
        return str(self.info.get("architecture") or self.info.get("model", {}).get("name", ""))


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True for a Bundle folder (or its bundle.json) and for `models:/` URIs."""
    text = os.fspath(path)
    if text.startswith("models:/"):
        return True
    folder = Path(text)
    return (folder / "bundle.json").is_file() or (folder.name == "bundle.json"
                                                   and folder.is_file())


def load_model_from_bundle(path: str | os.PathLike[str], *, device: str = "cpu"
                           ) -> ExplainableModel:
    """Rebuild a Bundle's network from bundle.json + weights.safetensors (no pickle).

    The rebuilding is export's (`load_torch_model`); Grad-CAM only needs the weights, so the
    Bundle's ONNX files are not required here.
    """
    from visiondeck.export.bundle import load_bundle
    from visiondeck.export.torch_model import load_torch_model

    bundle = load_bundle(path, check_files=False)
    model = load_torch_model(bundle, device=device)
    return ExplainableModel(model, list(bundle.classes), bundle.input, bundle.path, "bundle",
                            bundle.name, dict(bundle.info))


def load_explainable(path: str | os.PathLike[str], *, device: str = "cpu") -> ExplainableModel:
    """A run folder or a Bundle folder (or `models:/NAME@ALIAS`) → `ExplainableModel`."""
    if is_bundle(path):
        return load_model_from_bundle(path, device=device)
    from visiondeck.train.artifacts import load_trained

    trained = load_trained(path, device=device)
    info = {"architecture": trained.architecture, "model": trained.model_config.model_dump(),
            **trained.info}
    return ExplainableModel(trained.model, trained.classes, trained.spec, Path(path), "run",
                            Path(path).name, info)
