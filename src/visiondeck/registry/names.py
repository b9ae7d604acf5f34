"""Registered model names: one rule, checked wherever a name enters or leaves the registry.

MLflow accepts almost any text as a model name (only `/` and `:` are refused) and looks
versions up with a filter string (`name = '...'`), so a name carrying a quote would be read
as filter syntax. Names are therefore held to a plain alphabet before they reach a store:
registering, promoting and resolving all call `check_model_name`.
"""

from __future__ import annotations

import re

from visiondeck.registry.errors import RegistryError

__all__ = ["MODEL_NAME_PATTERN", "check_model_name", "name_filter"]

#: letters, digits, `.`, `_`, `-`; a letter or digit first; at most 256 characters
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")


def check_model_name(name: str) -> str:
    """`name` itself when it is a valid registered model name, else `RegistryError`."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.fullmatch(name):
        raise RegistryError(
            f"{name!r} is not a valid model name",
            hint="use letters, digits, '.', '_' and '-' (starting with a letter or digit, "
                 "at most 256 characters)",
        )
    return name


def name_filter(name: str) -> str:
    """The MLflow search filter that matches exactly the model `name` (checked first, so
    nothing in it can be read as filter syntax)."""
    return f"name = '{check_model_name(name)}'"
