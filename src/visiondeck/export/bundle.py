"""Read and write Bundles without torch: the one contract between training and serving.

A Bundle is a folder holding `model.onnx` (float32 [N, C, H, W] normalised input named
"input" → raw logits [N, K] named "logits"), optionally `model.int8.onnx`, the network's
`weights.safetensors`, and `bundle.json` (classes in logit order, input preparation,
calibration, metrics, provenance). Everything that consumes a model - `predict`, the API,
monitoring, the registry - reads it through `load_bundle`, so preparation and calibration
are decided once here and are identical everywhere. This module imports json, numpy,
Pillow and `visiondeck.imaging` only: a serving image never needs torch to read a Bundle.

Loading never unpickles: bundle.json is JSON, the models are ONNX, weights are safetensors.
File names inside bundle.json must be plain names in the folder (no path separators), so a
crafted bundle.json cannot point a server at files outside its Bundle.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visiondeck.data.transforms import normalize
from visiondeck.export.calibration import (
    Calibration,
    DecisionThreshold,
    RejectRule,
    _check,
    _floats,
    _Invalid,
    _mapping,
    softmax,
)
from visiondeck.export.errors import BundleError
from visiondeck.imaging import DecodeLimits, decode_image, resize_image

__all__ = [
    "BUNDLE_JSON", "FORMAT", "FORMAT_VERSION", "INT8_FILE", "MODEL_FILE", "WEIGHTS_FILE",
    "Bundle", "BundleError", "Calibration", "DecisionThreshold", "ImageInput", "InputSpec",
    "RejectRule", "load_bundle", "softmax", "utc_now", "write_bundle_json",
]  # fmt: skip

FORMAT = "visiondeck.bundle"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
WEIGHTS_FILE = "weights.safetensors"
RESIZE_POLICIES = ("stretch", "letterbox", "center_crop")
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 64_000_000

# what `prepare` accepts: encoded bytes, a file path, a decoded uint8 array or a PIL image
ImageInput = bytes | bytearray | memoryview | str | os.PathLike[str] | np.ndarray | Image.Image


def utc_now() -> str:
    """ISO-8601 UTC timestamp as bundle.json records it (seconds, trailing Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------ the parsed parts


@dataclass(frozen=True)
class InputSpec:
    """How any picture becomes the model's input: the training preparation, verbatim."""

    image_size: int
    channels: int
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_bytes: int | None = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    layout: str = "NCHW"
    dtype: str = "float32"

    @property
    def mode(self) -> str:
        """Decoder mode: "L" for one channel, "RGB" for three."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def limits(self) -> DecodeLimits:
        """Decoder limits for untrusted input (no minimum side: predicting small images is fine)."""
        return DecodeLimits(max_pixels=self.max_pixels, max_bytes=self.max_bytes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels, "resize": self.resize,
                "mean": list(self.mean), "std": list(self.std), "layout": self.layout,
                "dtype": self.dtype, "max_bytes": self.max_bytes, "max_pixels": self.max_pixels}

    @classmethod
    def from_dict(cls, raw: Any) -> InputSpec:
        raw = _mapping(raw, "input")
        size, channels = raw.get("image_size"), raw.get("channels")
        _check(isinstance(size, int) and not isinstance(size, bool) and size > 0,
               "input.image_size must be a positive integer")
        _check(channels in (1, 3), "input.channels must be 1 or 3")
        _check(raw.get("resize") in RESIZE_POLICIES,
               f"input.resize must be one of {RESIZE_POLICIES}")
        mean, std = _floats(raw.get("mean"), "input.mean"), _floats(raw.get("std"), "input.std")
        _check(len(mean) in (1, channels) and len(std) in (1, channels),
               f"input.mean/std need 1 or {channels} values")
        _check(all(s > 0 for s in std), "input.std values must be positive")
        _check(raw.get("layout", "NCHW") == "NCHW", "input.layout must be NCHW")
        _check(raw.get("dtype", "float32") == "float32", "input.dtype must be float32")
        max_bytes = raw.get("max_bytes", DEFAULT_MAX_BYTES)
        max_pixels = raw.get("max_pixels", DEFAULT_MAX_PIXELS)
        _check(max_bytes is None or (isinstance(max_bytes, int) and max_bytes > 0),
               "input.max_bytes must be a positive integer or null")
        _check(isinstance(max_pixels, int) and max_pixels > 0,
               "input.max_pixels must be a positive integer")
        return cls(size, channels, raw["resize"], mean, std, max_bytes, max_pixels)


# ----------------------------------------------------------------------------- the Bundle


@dataclass
class Bundle:
    """A loaded Bundle: parsed bundle.json plus helpers to prepare input and find files."""

    path: Path
    classes: list[str]
    input: InputSpec
    calibration: Calibration
    info: dict[str, Any] = field(repr=False)

    @property
    def name(self) -> str:
        return str(self.info.get("name", self.path.name))

    @property
    def architecture(self) -> str:
        return str(self.info.get("architecture", ""))

    @property
    def task(self) -> str:
        """"single" (softmax over classes) or "multilabel" (a sigmoid per label)."""
        return str(self.info.get("task", "single"))

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        """Variant name → {"file", "bytes", "accuracy", ...}; fp32 is always present."""
        return _variants(self.info)

    @property
    def default_variant(self) -> str:
        """The variant served when none is asked for: bundle.json's `default_variant` when
        it names a variant not marked `"recommended": false`, else "fp32"."""
        chosen = self.info.get("default_variant")
        entry = self.variants.get(chosen) if isinstance(chosen, str) else None
        return chosen if entry is not None and entry.get("recommended") is not False else "fp32"

    def resolve_variant(self, variant: str) -> str:
        """The variant a consumer runs: "auto" is `default_variant` (the one home of that
        rule for the server, the Predictor, `predict` and the Lambda handler); an explicit
        name is kept as asked, even one marked not recommended."""
        return self.default_variant if variant == "auto" else variant

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    def onnx_path(self, variant: str = "fp32") -> Path:
        """The ONNX file of a variant ("fp32" or "int8"); BundleError when the Bundle lacks it."""
        variants = self.variants
        if variant not in variants:
            raise BundleError(f"bundle {self.path} has no {variant!r} model "
                              f"(it has: {', '.join(sorted(variants))})",
                              hint="export with `visiondeck export RUN --int8` for an INT8 model"
                              if variant == "int8" else "use variant 'fp32'")
        return self.path / variants[variant]["file"]

    def prepare(self, image: ImageInput) -> np.ndarray:
        """Any supported picture → float32 (C, H, W), exactly as in training evaluation.

        bytes and paths go through the safe decoder with this Bundle's limits (so a broken
        file raises `ImageDecodeError`); arrays must be uint8 (H, W) or (H, W, 1|3|4);
        PIL images are used as they are (no EXIF rotation: they are already decoded).
        """
        spec = self.input
        array = to_array(image, spec.mode, spec.limits)
        array = resize_image(array, spec.image_size, spec.resize)  # type: ignore[arg-type]
        return normalize(array, spec.mean, spec.std)


def to_array(image: ImageInput, mode: str, limits: DecodeLimits) -> np.ndarray:
    """A uint8 (H, W, 1|3) array in decoder `mode` from any supported input form."""
    if isinstance(image, np.ndarray):
        return _array_to_mode(image, mode)
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "L", "RGBA", "LA"):
            buffer = io.BytesIO()  # any other mode: let the decoder apply its one policy
            image.save(buffer, format="TIFF")
            return decode_image(buffer.getvalue(), mode=mode, limits=limits).array  # type: ignore[arg-type]
        return _array_to_mode(np.asarray(image.convert("RGBA") if image.mode == "LA" else image),
                              mode)
    if isinstance(image, str | os.PathLike) and limits.max_bytes is not None:
        limits = _fitted(image, limits)
    return decode_image(image, mode=mode, limits=limits).array  # type: ignore[arg-type]


def _fitted(path: str | os.PathLike[str], limits: DecodeLimits) -> DecodeLimits:
    """The byte cap lowered to the file's size, so the decoder reads with a small buffer.

    `decode_image` reads at most `max_bytes + 1` bytes, and Python allocates that buffer up
    front: a 32 MiB cap costs ~0.15 ms per file, half the decode time of a 28 px PNG. The
    decoder still enforces the cap (a file larger than it keeps the cap and fails as
    TOO_LARGE; one that grows after the stat reads size + 1 bytes and fails too), and still
    refuses missing and non-regular files itself.
    """
    size = os.stat(path).st_size
    if limits.max_bytes is None or size >= limits.max_bytes:
        return limits
    return dataclasses.replace(limits, max_bytes=size)


def _array_to_mode(array: np.ndarray, mode: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8, not {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, "
                         f"got shape {array.shape}")
    if array.shape[2] == 4:  # composite over white, as the decoder does for alpha
        rgba = Image.fromarray(np.ascontiguousarray(array), "RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba)
        array = np.asarray(flat)
    if mode == "L" and array.shape[2] == 3:
        return np.asarray(Image.fromarray(np.ascontiguousarray(array)).convert("L"))[:, :, None]
    if mode == "RGB" and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)


# ------------------------------------------------------------------------- load and write


def load_bundle(path: str | os.PathLike[str] | Bundle, *, check_files: bool = True) -> Bundle:
    """Read and validate a Bundle folder (or its bundle.json, or a `models:/` URI).

    Every problem - no folder, malformed JSON, wrong format, a missing model or weights
    file - is one `BundleError` naming what is wrong, so a server refuses to start instead
    of failing on the first request. `check_files=False` skips the file checks (e.g. to
    read the metadata of a Bundle whose models are still being written).
    """
    if isinstance(path, Bundle):
        return path
    text = os.fspath(path)
    if text.startswith("models:/"):
        folder = _resolve_uri(text)
    else:
        folder = Path(text)
        if folder.name == BUNDLE_JSON and folder.is_file():
            folder = folder.parent
    manifest = folder / BUNDLE_JSON
    if not manifest.is_file():
        hint = ("give the folder `visiondeck export` wrote (RUN/bundle by default)"
                if folder.exists() else "check the path, or export a run first")
        raise BundleError(f"{folder} is not a Bundle: no {BUNDLE_JSON}", hint=hint)
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest} is not valid JSON ({exc})",
                          hint="re-export the run; the file was damaged or edited") from None
    bundle = _parse(folder, info, manifest)
    if check_files:
        _check_files(bundle)
    return bundle


def write_bundle_json(folder: str | os.PathLike[str], info: Mapping[str, Any]) -> Path:
    """Validate `info` against the contract and write `folder/bundle.json` atomically.

    Fills `format`, `format_version` and `created_at` when absent. Writing through here
    means a Bundle that was written can always be read back (files aside). Monitoring adds
    its "reference" key by loading the Bundle, updating `info` and calling this again.
    """
    target = Path(folder)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": utc_now(),
            **dict(info)}
    _parse(target, data, target / BUNDLE_JSON)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".{BUNDLE_JSON}.tmp"
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, target / BUNDLE_JSON)
    return target / BUNDLE_JSON


def _resolve_uri(uri: str) -> Path:
    try:
        from visiondeck.registry import resolve_bundle  # type: ignore[attr-defined]
    except ImportError as exc:
        raise BundleError(f"cannot resolve {uri}: the model registry is not available ({exc})",
                          hint="install visiondeck[track], or give a Bundle folder") from None
    return Path(resolve_bundle(uri))


def _parse(folder: Path, info: Any, manifest: Path) -> Bundle:
    try:
        _check(isinstance(info, dict), "the top level must be a JSON object")
        _check(info.get("format") == FORMAT, f"format must be {FORMAT!r}")
        version = info.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise BundleError(f"{manifest} has format_version {version!r}; this VisionDeck "
                              f"reads up to {FORMAT_VERSION}",
                              hint="upgrade visiondeck, or re-export with this version")
        classes = info.get("classes")
        _check(isinstance(classes, list) and len(classes) >= 2
               and all(isinstance(c, str) and c for c in classes),
               "classes must be a list of at least two non-empty names")
        _check(len(set(classes)) == len(classes), "class names must be unique")
        _check(info.get("task", "single") in ("single", "multilabel"),
               "task must be single or multilabel")
        spec = InputSpec.from_dict(info.get("input"))
        calibration = Calibration.from_dict(info.get("calibration"), classes)
        _variants(info)  # validates file names
        _check(info.get("default_variant") is None
               or (isinstance(info["default_variant"], str)
                   and info["default_variant"] in _variants(info)),
               "default_variant must name one of the variants")
    except _Invalid as exc:
        raise BundleError(f"{manifest} is malformed: {exc}",
                          hint="re-export the run with `visiondeck export RUN`") from None
    return Bundle(folder, list(classes), spec, calibration, info)


def _variants(info: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    raw = info.get("variants") or {"fp32": {"file": MODEL_FILE}}
    _check(isinstance(raw, dict) and "fp32" in raw, "variants must be an object with fp32")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in raw.items():
        _check(isinstance(entry, dict), f"variants.{name} must be an object")
        file = entry.get("file")
        _check(isinstance(file, str) and file not in ("", ".", "..") and "/" not in file
               and "\\" not in file and file.endswith(".onnx"),
               f"variants.{name}.file must be a plain .onnx file name in the Bundle")
        out[str(name)] = dict(entry)
    return out


def _check_files(bundle: Bundle) -> None:
    missing = [entry["file"] for entry in bundle.variants.values()
               if not (bundle.path / entry["file"]).is_file()]
    if not bundle.weights_path.is_file():
        missing.append(WEIGHTS_FILE)
    if missing:
        raise BundleError(f"bundle {bundle.path} is incomplete: missing {', '.join(missing)}",
                          hint="copy the whole Bundle folder, or re-export the run")


