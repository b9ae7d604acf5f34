"""Errors of the export stage and of reading a Bundle (torch-free, like the Bundle reader)."""

from __future__ import annotations

from visiondeck.errors import VisionDeckError

__all__ = ["BundleError", "ExportError"]


class BundleError(VisionDeckError):
    """A Bundle folder is missing files, or its bundle.json is malformed or unsupported.

    Serving maps it to "model unavailable"; the CLI exits with code 6.
    """

    exit_code = 6


class ExportError(VisionDeckError):
    """Export could not produce a model that matches the trained network (e.g. parity failed)."""

    exit_code = 7
