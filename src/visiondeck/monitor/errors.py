"""Errors of monitoring and retraining (torch-free, like the rest of `visiondeck.monitor`)."""

from __future__ import annotations

from visiondeck.errors import VisionDeckError

__all__ = ["MonitorError"]


class MonitorError(VisionDeckError):
    """Reference statistics missing or damaged, or a report/retrain that cannot run as asked.

    The CLI exits with code 11.
    """

    exit_code = 11
