"""The trained network of a run, as plain files every later stage can load without Lightning.

A Lightning checkpoint is a training-resumption format: it holds optimiser and loop state and
needs the LightningModule to load. Evaluation, export and Grad-CAM only need the network, so
at the end of a run (and whenever the best epoch improves) the best weights are written as
`model/weights.safetensors` (no pickle) with `model/model.json` (architecture, class names,
input preparation). `load_trained(run_dir)` rebuilds the `nn.Module` from those two files.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visiondeck._files import atomic_path, atomic_write_json
from visiondeck.config import ModelConfig, Recipe, load_recipe
from visiondeck.data.dataset import PrepareSpec
from visiondeck.errors import VisionDeckError

__all__ = ["MODEL_DIR", "TrainedModel", "load_run_splits", "load_trained", "save_trained"]

MODEL_DIR = "model"
FORMAT_VERSION = 1


class RunArtifactError(VisionDeckError):
    exit_code = 5


@dataclass
class TrainedModel:
    """A run's network in eval mode with everything needed to feed it."""

    model: Any  # torch.nn.Module, eval mode, on CPU
    classes: list[str]
    spec: PrepareSpec
    model_config: ModelConfig
    recipe: Recipe | None
    run_dir: Path
    info: dict[str, Any]  # model.json

    @property
    def architecture(self) -> str:
        return self.model_config.name

    @property
    def multilabel(self) -> bool:
        """A multi-label network: one independent sigmoid per class (model.json "task")."""
        return self.info.get("task") == "multilabel"


def save_trained(folder: Path, model: Any, *, recipe: Recipe, spec: PrepareSpec,
                 classes: list[str], extra: dict[str, Any] | None = None) -> Path:
    """Write `folder/model/{weights.safetensors,model.json}` atomically; returns the dir."""
    import torch
    from safetensors.torch import save_file

    target = Path(folder) / MODEL_DIR
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor)}
    with atomic_path(target / "weights.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "visiondeck",
                                             "version": str(FORMAT_VERSION)})
    info = {
        "format_version": FORMAT_VERSION,
        "model": recipe.model.model_dump(),
        "num_classes": len(classes),
        "classes": list(classes),
        "prepare": asdict(spec),
        **(extra or {}),
    }
    atomic_write_json(target / "model.json", info)
    return target


def load_trained(run_dir: str | os.PathLike[str], *, device: str = "cpu") -> TrainedModel:
    """Rebuild a run's best network from `model/` (never unpickles anything)."""
    from safetensors.torch import load_file

    from visiondeck.models import from_config

    folder = Path(run_dir)
    target = folder / MODEL_DIR
    if not (target / "model.json").exists() or not (target / "weights.safetensors").exists():
        raise RunArtifactError(
            f"{folder} holds no trained model (missing {MODEL_DIR}/model.json or weights)",
            hint="give a finished run folder (`visiondeck train` prints it), or resume it "
                 "with `visiondeck train --resume RUN` to finish training",
        )
    info = json.loads((target / "model.json").read_text())
    model_cfg = ModelConfig.model_validate(info["model"])
    spec_info = info["prepare"]
    spec = PrepareSpec(int(spec_info["image_size"]), int(spec_info["channels"]),
                       str(spec_info["resize"]), tuple(spec_info["mean"]),
                       tuple(spec_info["std"]))
    # the architecture only: weights come from the run, so no pretrained lookup is needed
    model = from_config(model_cfg.model_copy(update={"pretrained": False, "weights": None}),
                        num_classes=int(info["num_classes"]), in_chans=spec.channels)
    state = load_file(str(target / "weights.safetensors"), device=device)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise RunArtifactError(
            f"{target / 'weights.safetensors'} does not fit {model_cfg.name}: "
            f"{str(exc).splitlines()[-1].strip()}",
            hint="the weights and model.json come from different runs; re-run training",
        ) from None
    if missing or unexpected:
        raise RunArtifactError(
            f"{target / 'weights.safetensors'} does not fit {model_cfg.name}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}",
            hint="the weights and model.json come from different runs; re-run training",
        )
    model.to(device).eval()
    recipe_file = folder / "recipe.yaml"
    recipe = load_recipe(recipe_file) if recipe_file.exists() else None
    return TrainedModel(model, list(info["classes"]), spec, model_cfg, recipe, folder, info)


def load_run_splits(run_dir: str | os.PathLike[str]) -> tuple[Any, Any | None]:
    """The run's saved split, and the separate test split when `data.test_source` was used.

    Evaluation must score exactly the files the run held out, so it reads the split the run
    recorded in run.json rather than splitting again.
    """
    from visiondeck.data.split import load_split

    folder = Path(run_dir)
    info_file = folder / "run.json"
    if not info_file.exists():
        raise RunArtifactError(f"{folder} is not a run folder (no run.json)",
                               hint="give the folder `visiondeck train` printed, e.g. runs/NAME")
    ref = json.loads(info_file.read_text()).get("split") or {}
    if not ref.get("prepared"):
        raise RunArtifactError(f"{info_file} does not say where its split was saved",
                               hint="the run predates split references; train it again")
    split = load_split(ref["prepared"])
    if split.id != ref.get("id"):
        raise RunArtifactError(
            f"the split in {ref['prepared']} (id {split.id}) is not the one the run used "
            f"({ref.get('id')})",
            hint="the data or split was changed after training; re-train, or restore the split",
        )
    test = load_split(ref["test_prepared"]) if ref.get("test_prepared") else None
    return split, test
