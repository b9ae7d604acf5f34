"""Evaluation gates: `sensitivity>=0.92,specificity>=0.88,auc>=0.95` as a verdict, not a report.

A gate is checked twice: on the validation split, at the operating threshold chosen there
(for a binary task with a sensitivity bound, the most specific threshold that still reaches
it), and again on the test split at that same threshold, which was not tuned on it. A rule
passes only when both pass; the test value is shown with its bootstrap 95 % interval so a
reader sees how close to the bound a pass or a failure was. numpy only.

Multi-label runs gate on their own metrics (`map>=0.9,f1>=0.8,subset_accuracy>=0.5`,
`hamming_loss<=0.05`) and on one label's scores with `sensitivity[LABEL]>=0.9`; the
per-label thresholds are chosen on validation (a label with a sensitivity bound gets the
highest threshold reaching it there) and the rules are checked on validation and test as
above. Which names a run accepts is checked once, by `check_rules`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from visiondeck.errors import ConfigError

__all__ = [
    "GATE_METRICS",
    "LABEL_GATE_METRICS",
    "MULTILABEL_GATE_METRICS",
    "GateRule",
    "check_gate",
    "check_rules",
    "failed_rules",
    "gate_values",
    "label_sensitivity_targets",
    "needs_positive",
    "parse_gate",
    "sensitivity_target",
]

#: metric name in a gate -> what it reads (see `gate_values`)
GATE_METRICS = (
    "sensitivity",
    "specificity",
    "auc",
    "pr_auc",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "mcc",
)
_ALIASES = {
    "roc_auc": "auc",
    "recall": "sensitivity",
    "tpr": "sensitivity",
    "tnr": "specificity",
    "f1": "macro_f1",
    "acc": "accuracy",
}
#: multi-label runs: metric name -> the key of `evaluate.multilabel.multilabel_metrics`
MULTILABEL_GATE_METRICS = {
    "map": "map_macro",
    "map_micro": "map_micro",
    "auc": "roc_auc_macro",
    "auc_micro": "roc_auc_micro",
    "macro_f1": "f1_macro",
    "micro_f1": "f1_micro",
    "subset_accuracy": "subset_accuracy",
    "hamming_loss": "hamming_loss",
}
#: one label of a multi-label run, `metric[LABEL]`: name -> the key of its per-label row
LABEL_GATE_METRICS = {
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "precision": "precision",
    "f1": "f1",
    "ap": "average_precision",
    "auc": "roc_auc",
}
_MULTILABEL_ALIASES = {
    "map_macro": "map", "mean_average_precision": "map", "f1_macro": "macro_f1",
    "f1_micro": "micro_f1", "exact_match": "subset_accuracy", "roc_auc_micro": "auc_micro",
}
_LABEL_ALIASES = {
    "recall": "sensitivity", "tpr": "sensitivity", "tnr": "specificity", "ppv": "precision",
    "average_precision": "ap", "pr_auc": "ap", "roc_auc": "auc",
}
# metric, optional [label] (any characters but brackets and commas, case kept), op, bound
_RULE = re.compile(
    r"^\s*([A-Za-z_0-9]+)\s*(?:\[([^\[\],]+)\])?\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+)\s*$")
_CI_KEYS = {"auc": "roc_auc_macro"}  # the bootstrap's name, when it differs


@dataclass(frozen=True)
class GateRule:
    """One bound: `metric op bound`, e.g. sensitivity >= 0.92."""

    metric: str
    op: str
    bound: float
    label: str | None = None  # multi-label runs: the one label the rule reads

    @property
    def key(self) -> str:
        """`metric` or `metric[label]`: the rule's name in a verdict."""
        return self.metric if self.label is None else f"{self.metric}[{self.label}]"

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False  # an undefined metric (e.g. AUC of a one-class split) never passes
        return {
            ">=": value >= self.bound,
            ">": value > self.bound,
            "<=": value <= self.bound,
            "<": value < self.bound,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.bound:g}"


def parse_gate(text: str) -> list[GateRule]:
    """`"sensitivity>=0.92, specificity>=0.88, auc>=0.95"` → rules.

    A malformed gate is a `ConfigError` (exit 2), never confused with a failed one (exit 5).
    """
    rules: list[GateRule] = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _RULE.match(part)
        if not match:
            raise ConfigError(
                f"cannot read gate rule {part.strip()!r}",
                hint="write rules like sensitivity>=0.92,auc>=0.95 (multi-label: "
                     "map>=0.9,sensitivity[LABEL]>=0.9)",
            )
        name, label, op, bound = match.groups()
        name = name.lower()
        if label is not None:
            name = _LABEL_ALIASES.get(name, name)
            if name not in LABEL_GATE_METRICS:
                raise ConfigError(f"unknown per-label gate metric {name!r}",
                                  hint=f"use one of: {', '.join(LABEL_GATE_METRICS)}")
            rules.append(GateRule(name, op, float(bound), label.strip()))
            continue
        name = _ALIASES.get(name, _MULTILABEL_ALIASES.get(name, name))
        if name not in GATE_METRICS and name not in MULTILABEL_GATE_METRICS:
            known = dict.fromkeys([*GATE_METRICS, *MULTILABEL_GATE_METRICS])
            raise ConfigError(
                f"unknown gate metric {name!r}", hint=f"use one of: {', '.join(known)}"
            )
        rules.append(GateRule(name, op, float(bound)))
    if not rules:
        raise ConfigError(
            "the gate has no rule", hint="e.g. --gate sensitivity>=0.92,specificity>=0.88,auc>=0.95"
        )
    return rules


def check_rules(rules: list[GateRule], *, multilabel: bool, classes: list[str]) -> None:
    """Refuse rules the run cannot answer (a `ConfigError`, exit 2, before any scoring):
    single-label metrics on a multi-label run and back, or a label the run does not have."""
    for rule in rules:
        if rule.label is not None:
            if not multilabel:
                raise ConfigError(f"gate rule {rule} names a label, which only multi-label "
                                  "runs have", hint=f"use one of: {', '.join(GATE_METRICS)}")
            if rule.label not in classes:
                raise ConfigError(f"gate rule {rule}: the run has no label {rule.label!r}",
                                  hint=f"its labels: {', '.join(classes)}")
        elif multilabel and rule.metric not in MULTILABEL_GATE_METRICS:
            raise ConfigError(
                f"gate metric {rule.metric!r} is for single-label runs",
                hint=f"multi-label runs: {', '.join(MULTILABEL_GATE_METRICS)}, or per label "
                     f"{', '.join(f'{m}[LABEL]' for m in LABEL_GATE_METRICS)}")
        elif not multilabel and rule.metric not in GATE_METRICS:
            raise ConfigError(f"gate metric {rule.metric!r} is for multi-label runs",
                              hint=f"use one of: {', '.join(GATE_METRICS)}")


def label_sensitivity_targets(rules: list[GateRule], classes: list[str]) -> dict[int, float]:
    """Multi-label: label index -> the sensitivity its threshold must reach on validation
    (the highest `sensitivity[LABEL]` lower bound)."""
    targets: dict[int, float] = {}
    for rule in rules:
        if rule.label in classes and rule.metric == "sensitivity" and rule.op in (">=", ">"):
            j = classes.index(rule.label)
            targets[j] = max(targets.get(j, 0.0), rule.bound)
    return targets


def needs_positive(rules: list[GateRule]) -> bool:
    """Whether the rules need a positive class (sensitivity and specificity do)."""
    return any(r.metric in ("sensitivity", "specificity") for r in rules)


def sensitivity_target(rules: list[GateRule]) -> float | None:
    """The sensitivity the operating threshold must reach on validation (the gate's bound)."""
    bounds = [r.bound for r in rules if r.metric == "sensitivity" and r.op in (">=", ">")]
    return max(bounds) if bounds else None


def gate_values(full: dict[str, Any]) -> dict[str, float | None]:
    """The gate metrics of one `compute_metrics` result (positive class's AUC when there is
    one, else the macro one-vs-rest AUC)."""
    if "map_macro" in full:  # a multi-label result (`multilabel_metrics`)
        values: dict[str, float | None] = {
            name: full.get(key) for name, key in MULTILABEL_GATE_METRICS.items()}
        for label, row in (full.get("per_label") or {}).items():
            for name, key in LABEL_GATE_METRICS.items():
                values[f"{name}[{label}]"] = row.get(key)
        return values
    positive = full.get("positive_class") or {}
    return {
        "sensitivity": positive.get("sensitivity"),
        "specificity": positive.get("specificity"),
        "auc": positive.get("roc_auc") if positive else full.get("roc_auc_macro"),
        "pr_auc": positive.get("pr_auc") if positive else full.get("pr_auc_macro"),
        "accuracy": full.get("accuracy"),
        "balanced_accuracy": full.get("balanced_accuracy"),
        "macro_f1": (full.get("macro") or {}).get("f1"),
        "mcc": full.get("mcc"),
    }


def check_gate(
    rules: list[GateRule],
    val: dict[str, Any],
    test: dict[str, Any],
    test_ci: dict[str, Any],
    *,
    test_split: str = "test",
    threshold: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The gate's verdict as metrics.json stores it ("gate" section).

    `val` and `test` are `compute_metrics` results at the operating threshold; `test_ci`
    the bootstrap intervals of the test split.
    """
    on_val, on_test = gate_values(val), gate_values(test)
    ci_keys = MULTILABEL_GATE_METRICS if "map_macro" in test else _CI_KEYS
    rows = []
    for rule in rules:
        v, t = on_val.get(rule.key), on_test.get(rule.key)
        ci = test_ci.get(rule.key if rule.label else ci_keys.get(rule.metric, rule.metric))
        rows.append(
            {
                "metric": rule.key,
                "op": rule.op,
                "bound": rule.bound,
                "val": v,
                test_split: t,
                f"{test_split}_ci95": ci,
                "passed_val": rule.holds(v),
                f"passed_{test_split}": rule.holds(t),
                "passed": rule.holds(v) and rule.holds(t),
            }
        )
    return {
        "spec": ",".join(str(r) for r in rules),
        "split": test_split,
        "threshold": threshold,
        "rules": rows,
        "passed": all(r["passed"] for r in rows),
    }


def failed_rules(gate: dict[str, Any]) -> list[str]:
    """Human lines for the rules a stored gate verdict failed (for refusals and the CLI)."""
    split = gate.get("split", "test")
    lines = []
    for row in gate.get("rules", []):
        if not row.get("passed"):
            lines.append(
                f"{row['metric']} {row['op']} {row['bound']:g}: val {row.get('val')}, "
                f"{split} {row.get(split)}"
            )
    return lines
