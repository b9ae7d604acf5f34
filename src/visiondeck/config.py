"""Typed recipes: one schema, one commented defaults file, `key=value` overrides.

Precedence is defaults < YAML file < command-line overrides. Every section forbids unknown
keys and the error names the closest valid key, because a silently ignored typo
(`train.epoch=3`) costs a user a whole training run. Recipes are immutable: an override
produces a new recipe, never an in-place change, and the resolved recipe is what gets saved
with every run.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from visiondeck._files import atomic_write_text
from visiondeck.errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "Recipe",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "load_recipe",
    "parse_overrides",
    "read_recipe_file",
    "recipe_to_yaml",
    "render_defaults",
    "save_recipe",
    "validate_recipe",
]


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads off/on/yes/no as booleans,
    which would turn `data.cache=off` into False."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader: builds plain types only


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the images come from and how they are split and prepared."""

    source: str = Field(
        "builtin:sample",
        description="class-folder directory, CSV/Parquet manifest (path,label), or builtin:NAME",
    )
    test_source: str | None = Field(
        None, description="optional separate test set (same forms as source); else carved out"
    )
    task: Literal["auto", "single", "multilabel"] = Field(
        "auto", description="auto: multilabel for a manifest with a labels column (a|b) or "
        "0/1 label columns, else single; multilabel also reads a label column as a|b"
    )
    prepared: str | None = Field(
        None, description="where the catalog and split are saved (null = prepared/<source name>)"
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share of files for validation")
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share of files for test")
    folds: int = Field(0, ge=0, description="k for stratified k-fold cross-validation (0 = off)")
    seed: int = Field(42, description="seed of the split; same data + seed = same split")
    image_size: int = Field(224, ge=8, le=4096, description="side of the square model input")
    channels: Literal[1, 3] = Field(3, description="1 = grayscale, 3 = RGB")
    resize: Literal["stretch", "letterbox", "center_crop"] = Field(
        "stretch", description="how images reach image_size: stretch, letterbox or center_crop"
    )
    mean: tuple[float, ...] | None = Field(
        None, description="normalisation mean per channel (null = from the model or the data)"
    )
    std: tuple[float, ...] | None = Field(
        None, description="normalisation std per channel (null = from the model or the data)"
    )
    augment: Literal["none", "light", "standard", "strong"] = Field(
        "standard", description="augmentation preset for training"
    )
    flip: bool = Field(
        True, description="random horizontal flips in the augmentation (off when a mirror "
        "image is another class: digits, letters)"
    )
    min_size: int | None = Field(
        None, ge=1,
        description="images with a side below this are rejected (null = relative to the data: "
        "under a quarter of the set's median size; under 2 px never)",
    )
    max_pixels: int = Field(
        64_000_000, ge=1, description="decompression-bomb guard, checked before decoding"
    )
    num_workers: int | None = Field(
        None, ge=0, description="decode processes (null = one per core, at most 8)"
    )
    cache: Literal["auto", "memory", "off"] = Field(
        "auto", description="decode once into memory (auto: when it fits cache_max_gb)"
    )
    cache_max_gb: float = Field(2.0, gt=0.0, description="largest decoded cache auto uses")

    @field_validator("mean", "std")
    @classmethod
    def _positive_length(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and len(value) not in (1, 3):
            raise ValueError("give 1 value (grayscale) or 3 values (RGB)")
        return value


class ModelConfig(_Section):
    """Which network is trained (read by `visiondeck train`)."""

    name: str = Field("simple_cnn", description="architecture: ours, timm or torchvision name")
    pretrained: bool = Field(False, description="start from pretrained weights (offline first)")
    weights: str | None = Field(None, description="local weights file (.safetensors or .pth)")
    attention: Literal["none", "cbam", "se", "eca"] = Field(
        "none", description="attention blocks added after each stage of any CNN backbone"
    )
    head: Literal["softmax", "binary"] = Field(
        "softmax", description="binary: one logit + BCE (two-class tasks), else softmax + CE"
    )
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="dropout before the classifier (null = the architecture's own default)",
    )


class TrainConfig(_Section):
    """How the network is trained (read by `visiondeck train`)."""

    epochs: int = Field(10, ge=1, description="number of epochs")
    max_minutes: float | None = Field(
        None, gt=0.0, description="stop after this much training time (null = no limit)"
    )
    batch_size: int = Field(64, ge=1, description="images per optimiser step")
    lr: float = Field(1e-3, gt=0.0, description="peak learning rate")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimiser")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (Nesterov)")
    weight_decay: float = Field(1e-4, ge=0.0, description="weight decay")
    scheduler: Literal["onecycle", "cosine", "plateau", "none"] = Field(
        "onecycle", description="learning-rate schedule"
    )
    warmup_epochs: float = Field(
        0.0, ge=0.0, description="linear warm-up for cosine (onecycle warms up by itself)"
    )
    loss: Literal["ce", "focal", "asl"] = Field(
        "ce", description="ce (multi-label data: binary cross-entropy per label), focal "
        "(single-label), asl (asymmetric loss, multi-label)"
    )
    focal_gamma: float = Field(2.0, ge=0.0, description="focusing parameter of focal loss")
    asl_gamma_neg: float = Field(
        4.0, ge=0.0, description="asymmetric loss (multi-label): focusing of negatives"
    )
    asl_gamma_pos: float = Field(
        0.0, ge=0.0, description="asymmetric loss (multi-label): focusing of positives"
    )
    asl_clip: float = Field(
        0.05, ge=0.0, lt=1.0,
        description="asymmetric loss (multi-label): probability margin shifted off negatives",
    )
    pos_weight: float | None = Field(
        None, gt=0.0,
        description="model.head=binary: BCE weight of positives (null = 1, or n_neg/n_pos "
        "with balance=weights)",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="label smoothing")
    balance: Literal["none", "weights", "sampler", "focal"] = Field(
        "none", description="class-imbalance handling"
    )
    mixup: float = Field(0.0, ge=0.0, description="mixup alpha (0 = off)")
    cutmix: float = Field(0.0, ge=0.0, description="cutmix alpha (0 = off)")
    freeze: Literal["none", "backbone", "progressive"] = Field(
        "none", description="transfer learning: train all, head only, or unfreeze stage by stage"
    )
    unfreeze_every: int = Field(
        1, ge=1, description="progressive: epochs between unfreezing one more stage"
    )
    backbone_lr_mult: float = Field(
        1.0, gt=0.0, le=1.0, description="backbone LR = lr × this (discriminative LRs)"
    )
    grad_clip: float | None = Field(None, gt=0.0, description="clip gradient norm (null = off)")
    accumulate: int = Field(1, ge=1, description="batches per optimiser step")
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: mixed precision on GPUs that support it, else 32"
    )
    ema: float | None = Field(
        None, gt=0.0, lt=1.0, description="EMA decay of weights, e.g. 0.999 (null = off)"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: object) -> object:
        # `train.precision=32` and YAML's `precision: 32` arrive as the integer 32
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    channels_last: bool = Field(True, description="channels-last memory format (faster convs)")
    patience: int | None = Field(None, ge=1, description="early stopping patience (null = off)")
    seed: int = Field(0, description="seed of weights and data order")
    deterministic: bool = Field(False, description="deterministic algorithms (slower)")
    gate_metric: str = Field("val_acc", description="metric the quality gate checks")
    min_val_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="quality gate: the run fails below this"
    )
    gate: str | None = Field(
        None,
        description="evaluation gate, e.g. sensitivity>=0.92,specificity>=0.88,auc>=0.95 "
        "(checked by `visiondeck evaluate` on val and test; exit 5 when it fails)",
    )
    devices: int = Field(1, ge=1, description="processes/devices per node (DDP when > 1)")
    num_nodes: int = Field(1, ge=1, description="nodes for multi-node DDP")
    accelerator: Literal["auto", "cpu", "gpu", "mps"] = Field("auto", description="hardware")


class TrackingConfig(_Section):
    """Where runs are tracked (read by train, evaluate, export and the registry)."""

    enabled: bool = Field(True, description="log runs to MLflow")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI (null = $MLFLOW_TRACKING_URI, else a local SQLite "
        "store in mlruns/ beside the runs)",
    )
    experiment: str | None = Field(None, description="MLflow experiment (null = recipe name)")


class Recipe(_Section):
    """A complete, resolved description of one run."""

    name: str = Field("default", description="run name; the run folder is runs/NAME")
    output_dir: str = Field("runs", description="where run folders are created")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# ---------------------------------------------------------------------------- loading


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """Resolve a recipe: defaults, then the YAML file (if any), then `key=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    raw = apply_overrides(raw, parse_overrides(overrides))
    return _validate(raw, source=str(path) if path else "defaults")


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a recipe YAML file: what it sets, before defaults fill the rest
    (the automatic recipe leaves exactly these keys alone)."""
    return _read_yaml(Path(path))


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """A `Recipe` from a raw nested mapping, with the same errors as `load_recipe`."""
    return _validate(raw, source=source)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse `a.b=value` strings; values are read as YAML (`3` → int, `[1,2]` → list)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form key=value",
                hint="write e.g. train.epochs=3 or data.source=path/to/images",
            )
        _check_key(key)
        try:
            parsed[key] = _scalar(_load_yaml(text)) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot read the value of {key!r}: {exc}") from exc
    return parsed


def _scalar(value: Any) -> Any:
    """YAML 1.1 reads `3e-4` as a string; users mean a number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted-key overrides set (the input is not modified)."""
    result = _deep_copy(raw)
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    return result


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML, the form saved with every run."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, recipe_to_yaml(recipe))  # resume reads it back
    return path


def render_defaults() -> str:
    """The commented defaults file, generated from the schema so it can never go stale."""
    lines = [
        "# VisionDeck recipe defaults, generated from visiondeck.config (do not edit by hand:",
        "# `visiondeck config defaults > configs/defaults.yaml`). A recipe file only needs the",
        "# keys it changes; `key=value` on the command line overrides both.",
    ]
    _render_model(Recipe(), lines, indent=0)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- internals


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"recipe file not found: {path}", hint="give a YAML file, e.g. configs/sample.yaml"
        )
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data:, model:, train:)")
    return data


def _validate(raw: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key {where!r}{_suggest(where)}")
            else:
                problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(
            f"invalid recipe ({source}):\n  " + "\n  ".join(problems),
            hint="`visiondeck config defaults` lists every key with its type",
        ) from None


def _all_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        sub = _section_type(field.annotation)
        if sub is not None:
            keys.extend(_all_keys(sub, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _check_key(key: str) -> None:
    if key not in _all_keys():
        raise ConfigError(f"unknown key {key!r}{_suggest(key)}")


def _suggest(key: str) -> str:
    matches = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return "list"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _render_model(model: BaseModel, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append("")
            lines.append(f"{pad}{name}:  # {type(value).__doc__.strip().splitlines()[0]}")
            _render_model(value, lines, indent + 1)
            continue
        text = yaml.safe_dump(
            value if not isinstance(value, tuple) else list(value), default_flow_style=True
        ).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        lines.append(
            f"{pad}{name}: {text}  # ({_type_name(field.annotation)}) {field.description or ''}"
        )
