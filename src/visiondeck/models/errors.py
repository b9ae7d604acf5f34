"""The one exception of the model layer.

Kept in its own torch-free module so the CLI can catch it (and map it to exit code 4)
without importing torch or timm.
"""

from __future__ import annotations

from visiondeck.errors import VisionDeckError

__all__ = ["ModelError"]


class ModelError(VisionDeckError):
    """A network cannot be built or loaded as asked (unknown name, unusable weights...)."""

    exit_code = 4
