"""Calibration read from a Bundle: temperature, unknown-input rejection, binary threshold,
and for multi-label Bundles a threshold and a temperature per label.

Evaluation fits these on validation data (RUN/evaluation/calibration.json) and export
copies them into bundle.json; `predict` and the API apply them through this one module, so
a probability or an "unknown" answer means the same everywhere. numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from visiondeck.export.errors import BundleError

__all__ = ["Calibration", "DecisionThreshold", "RejectRule", "sigmoid", "softmax"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / temperature) in float64, stable for any logit scale."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64 (multi-label probabilities), stable for
    any logit scale."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class RejectRule:
    """Answer "unknown" for inputs unlike the training data.

    max_prob: unknown when the top calibrated probability is below `threshold`.
    energy: unknown when the energy score -T·logsumexp(logits / T) is above `threshold`
    (in-distribution inputs have low energy).
    """

    method: str
    threshold: float

    def unknown(self, logits: np.ndarray, probabilities: np.ndarray, temperature: float
                ) -> np.ndarray:
        """Boolean per row."""
        if self.method == "max_prob":
            return probabilities.max(axis=-1) < self.threshold
        z = np.asarray(logits, dtype=np.float64) / temperature
        top = z.max(axis=-1, keepdims=True)
        energy = -temperature * (top[..., 0] + np.log(np.exp(z - top).sum(axis=-1)))
        return energy > self.threshold


@dataclass(frozen=True)
class DecisionThreshold:
    """Binary tasks: predict `positive_class` when its probability is at least `threshold`."""

    positive_class: str
    threshold: float


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling, unknown-input rejection and the binary decision threshold."""

    temperature: float = 1.0
    reject: RejectRule | None = None
    decision_threshold: DecisionThreshold | None = None
    #: multi-label Bundles: label → threshold its probability must reach (chosen on
    #: validation by `visiondeck evaluate`); a label missing here uses 0.5
    label_thresholds: dict[str, float] | None = None
    #: multi-label Bundles: label → its own temperature (fitted on validation); a label
    #: missing here (every Bundle written before per-label calibration) uses 1.0
    label_temperatures: dict[str, float] | None = None
    #: the Bundle's classes in logit order (set by `from_dict`): which column each
    #: per-label temperature divides
    label_order: tuple[str, ...] | None = None

    def label_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Multi-label probabilities: sigmoid(logits / (temperature × label temperature)),
        one per label, so every consumer (Predictor, the API) gets the calibrated ones."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        if self.label_temperatures:
            order = self.label_order or tuple(self.label_temperatures)
            if z.shape[-1] != len(order):
                raise BundleError(f"calibration.label_temperatures cover {len(order)} "
                                  f"labels, the model answers {z.shape[-1]}")
            z = z / np.asarray([self.label_temperatures.get(c, 1.0) for c in order])
        return sigmoid(z)

    def thresholds(self, classes: list[str]) -> np.ndarray:
        """Per-label thresholds in class order (0.5 where none was chosen)."""
        chosen = self.label_thresholds or {}
        return np.asarray([chosen.get(c, 0.5) for c in classes], dtype=np.float64)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax(logits / temperature)."""
        return softmax(logits, self.temperature)

    def unknown(self, logits: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        if self.reject is None:
            return np.zeros(np.asarray(logits).shape[0], dtype=bool)
        return self.reject.unknown(logits, probabilities, self.temperature)

    def decide(self, probabilities: np.ndarray, classes: list[str]) -> np.ndarray:
        """Predicted class index per row: argmax, or the decision threshold for binary tasks."""
        index = probabilities.argmax(axis=-1)
        rule = self.decision_threshold
        if rule is not None and len(classes) == 2 and rule.positive_class in classes:
            positive = classes.index(rule.positive_class)
            index = np.where(probabilities[:, positive] >= rule.threshold, positive, 1 - positive)
        return index

    def to_dict(self) -> dict[str, Any]:
        reject, rule = self.reject, self.decision_threshold
        out: dict[str, Any] = {
            "temperature": self.temperature,
            "reject": None if reject is None else {"method": reject.method,
                                                   "threshold": reject.threshold},
            "decision_threshold": None if rule is None else {
                "positive_class": rule.positive_class, "threshold": rule.threshold},
        }
        if self.label_thresholds is not None:
            out["label_thresholds"] = dict(self.label_thresholds)
        if self.label_temperatures is not None:
            out["label_temperatures"] = dict(self.label_temperatures)
        return out

    @classmethod
    def from_dict(cls, raw: Any, classes: list[str] | None = None) -> Calibration:
        if raw is None:
            return cls()
        raw = _mapping(raw, "calibration")
        temperature = raw.get("temperature", 1.0)
        _check(_is_number(temperature) and temperature > 0,
               "calibration.temperature must be a positive number")
        reject = raw.get("reject")
        rule = None
        if reject is not None:
            reject = _mapping(reject, "calibration.reject")
            _check(reject.get("method") in ("max_prob", "energy"),
                   "calibration.reject.method must be max_prob or energy")
            _check(_is_number(reject.get("threshold")),
                   "calibration.reject.threshold must be a number")
            rule = RejectRule(reject["method"], float(reject["threshold"]))
        decision = raw.get("decision_threshold")
        threshold = None
        if decision is not None:
            decision = _mapping(decision, "calibration.decision_threshold")
            _check(isinstance(decision.get("positive_class"), str)
                   and (classes is None or decision["positive_class"] in classes),
                   "calibration.decision_threshold.positive_class must name one of the classes")
            _check(_is_number(decision.get("threshold")) and 0 <= decision["threshold"] <= 1,
                   "calibration.decision_threshold.threshold must be in 0..1")
            threshold = DecisionThreshold(decision["positive_class"], float(decision["threshold"]))
        labels = raw.get("label_thresholds")
        if labels is not None:
            labels = _mapping(labels, "calibration.label_thresholds")
            _check(all(classes is None or name in classes for name in labels),
                   "calibration.label_thresholds must name classes of the Bundle")
            _check(all(_is_number(v) and 0 <= v <= 1 for v in labels.values()),
                   "calibration.label_thresholds values must be in 0..1")
            labels = {str(k): float(v) for k, v in labels.items()}
        temperatures = raw.get("label_temperatures")
        if temperatures is not None:
            temperatures = _mapping(temperatures, "calibration.label_temperatures")
            _check(all(classes is None or name in classes for name in temperatures),
                   "calibration.label_temperatures must name classes of the Bundle")
            _check(all(_is_number(v) and v > 0 for v in temperatures.values()),
                   "calibration.label_temperatures values must be positive numbers")
            temperatures = {str(k): float(v) for k, v in temperatures.items()}
        return cls(float(temperature), rule, threshold, labels, temperatures,
                   tuple(classes) if classes is not None else None)


class _Invalid(BundleError):
    """Internal: a contract violation, re-raised with the manifest's path."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise _Invalid(message)


def _mapping(raw: Any, what: str) -> Mapping[str, Any]:
    _check(isinstance(raw, dict), f"{what} must be an object")
    return raw


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _floats(raw: Any, what: str) -> tuple[float, ...]:
    _check(isinstance(raw, list) and raw and all(_is_number(v) for v in raw),
           f"{what} must be a non-empty list of numbers")
    return tuple(float(v) for v in raw)
