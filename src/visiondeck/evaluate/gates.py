"""Evaluation gates: `sensitivity>=0.92,specificity>=0.88,auc>=0.95` as a verdict, not a report.

A gate is checked twice: on the validation split, at the operating threshold chosen there
(for a binary task with a sensitivity bound, the most specific threshold that still reaches
it), and again on the test split at that same threshold, which was not tuned on it. A rule
passes only when both pass; the test value is shown with its bootstrap 95 % interval so a
reader sees how close to the bound a pass or a failure was. numpy only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from visiondeck.errors import ConfigError

__all__ = [
    "GATE_METRICS",
    "GateRule",
    "check_gate",
    "failed_rules",
    "gate_values",
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
_RULE = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+)\s*$")
_CI_KEYS = {"auc": "roc_auc_macro"}  # the bootstrap's name, when it differs


@dataclass(frozen=True)
class GateRule:
    """One bound: `metric op bound`, e.g. sensitivity >= 0.92."""

    metric: str
    op: str
    bound: float

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
        return f"{self.metric}{self.op}{self.bound:g}"


def parse_gate(text: str) -> list[GateRule]:
    """`"sensitivity>=0.92, specificity>=0.88, auc>=0.95"` → rules.

    A malformed gate is a `ConfigError` (exit 2), never confused with a failed one (exit 5).
    """
    rules: list[GateRule] = []
    for part in (p for p in text.split(",") if p.strip()):
        match = _RULE.match(part.lower())
        if not match:
            raise ConfigError(
                f"cannot read gate rule {part.strip()!r}",
                hint="write rules like sensitivity>=0.92,auc>=0.95",
            )
        name, op, bound = match.groups()
        name = _ALIASES.get(name, name)
        if name not in GATE_METRICS:
            raise ConfigError(
                f"unknown gate metric {name!r}", hint=f"use one of: {', '.join(GATE_METRICS)}"
            )
        rules.append(GateRule(name, op, float(bound)))
    if not rules:
        raise ConfigError(
            "the gate has no rule", hint="e.g. --gate sensitivity>=0.92,specificity>=0.88,auc>=0.95"
        )
    return rules


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
    rows = []
    for rule in rules:
        v, t = on_val[rule.metric], on_test[rule.metric]
        ci = test_ci.get(_CI_KEYS.get(rule.metric, rule.metric))
        rows.append(
            {
                "metric": rule.metric,
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
