"""Errors of tracking and the model registry (importable without MLflow)."""

from __future__ import annotations

from visiondeck.errors import VisionDeckError

__all__ = ["RegistryError", "RegistryRefusal", "TrackingWarning"]


class RegistryError(VisionDeckError):
    """The tracking store or model registry cannot do what was asked (unreachable store,
    unknown model, version or run, a model version that holds no Bundle)."""

    exit_code = 9


class RegistryRefusal(RegistryError):
    """A policy said no: the run failed its quality gate, or the model is worse than the
    current champion. Its own exit code lets a CI script tell "refused" from "broken";
    `--force` overrides it and the override is recorded on the model version."""

    exit_code = 10


class TrackingWarning(UserWarning):
    """Logging to MLflow failed during a run; the run itself carries on.

    A tracking server that hiccups must not cost a two-hour training run, so the tracker
    warns and keeps training; the run folder stays the source of truth.
    """
