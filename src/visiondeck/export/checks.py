"""Measurements of an exported model: parity with PyTorch and accuracy per engine.

Both run on the same numpy-prepared input (the Bundle's preparation), so a difference can
only come from the engines, never from preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.export.bundle import InputSpec, softmax
from visiondeck.export.calibration import sigmoid
from visiondeck.export.samples import iter_batches

__all__ = ["measure_accuracy", "ort_session", "parity_check", "torch_logits"]


def ort_session(path: Path) -> Any:
    """A quiet CPU session with ORT's default threading."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def torch_logits(model: Any, images: np.ndarray) -> np.ndarray:
    """Logits of the PyTorch model for a prepared float32 batch."""
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(images)).float().numpy()


def parity_check(model: Any, onnx_path: Path, images: np.ndarray, source: str, *,
                 multilabel: bool = False) -> dict[str, Any]:
    """Max |Δ probability| and top-1 agreement between PyTorch and the ONNX file.

    `multilabel`: probabilities are sigmoids, and "top1_agreement" is the share of images
    whose whole label set (each label at 0.5) is the same in both."""
    to_probs = sigmoid if multilabel else softmax
    reference = to_probs(torch_logits(model, images))
    candidate = to_probs(ort_session(onnx_path).run(["logits"], {"input": images})[0])
    if multilabel:
        agreement = float(((reference >= 0.5) == (candidate >= 0.5)).all(axis=1).mean())
    else:
        agreement = float((reference.argmax(1) == candidate.argmax(1)).mean())
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "top1_agreement": agreement,
        "n_images": len(images),
        "source": source,
    }


def measure_accuracy(model: Any, sessions: dict[str, Any], root: Path, records: list,
                     classes: list[str], spec: InputSpec, *, multilabel: bool = False
                     ) -> dict[str, dict[str, Any]]:
    """Test accuracy of PyTorch (when `model` is given) and each ONNX session, one decode pass.

    `multilabel`: "accuracy" is the share of right (image, label) decisions at 0.5
    (1 - Hamming loss), agreement likewise per (image, label)."""
    if multilabel:
        return _label_accuracy(model, sessions, root, records, classes, spec)
    correct = dict.fromkeys([*(["pytorch"] if model is not None else []), *sessions], 0)
    agree = dict.fromkeys(sessions, 0)
    seen = 0
    for batch in iter_batches(root, records, classes, spec, batch_size=64):
        seen += len(batch.labels)
        outputs = {name: s.run(["logits"], {"input": batch.images})[0].argmax(1)
                   for name, s in sessions.items()}
        if model is not None:
            outputs["pytorch"] = torch_logits(model, batch.images).argmax(1)
        for name, predicted in outputs.items():
            correct[name] += int((predicted == batch.labels).sum())
        if "fp32" in outputs:
            for name in sessions:
                agree[name] += int((outputs[name] == outputs["fp32"]).sum())
    out: dict[str, dict[str, Any]] = {}
    for name, hits in correct.items():
        out[name] = {"accuracy": round(hits / seen, 6) if seen else None, "n_test": seen}
        if name in sessions and name != "fp32" and "fp32" in sessions and seen:
            out[name]["agreement_with_fp32"] = round(agree[name] / seen, 6)
    return out


def _label_accuracy(model: Any, sessions: dict[str, Any], root: Path, records: list,
                    classes: list[str], spec: InputSpec) -> dict[str, dict[str, Any]]:
    names = [*(["pytorch"] if model is not None else []), *sessions]
    correct = dict.fromkeys(names, 0)
    agree = dict.fromkeys(sessions, 0)
    seen = cells = 0
    for batch in iter_batches(root, records, classes, spec, batch_size=64, multilabel=True):
        seen += len(batch.labels)
        cells += batch.labels.size
        outputs = {name: s.run(["logits"], {"input": batch.images})[0] >= 0
                   for name, s in sessions.items()}  # logit >= 0 <=> sigmoid >= 0.5
        if model is not None:
            outputs["pytorch"] = torch_logits(model, batch.images) >= 0
        truth = batch.labels.astype(bool)
        for name, decided in outputs.items():
            correct[name] += int((decided == truth).sum())
        if "fp32" in outputs:
            for name in sessions:
                agree[name] += int((outputs[name] == outputs["fp32"]).sum())
    out: dict[str, dict[str, Any]] = {}
    for name, hits in correct.items():
        out[name] = {"accuracy": round(hits / cells, 6) if cells else None, "n_test": seen}
        if name in sessions and name != "fp32" and "fp32" in sessions and cells:
            out[name]["agreement_with_fp32"] = round(agree[name] / cells, 6)
    return out
