"""Lazy public names for packages whose implementations import heavy libraries.

`import visiondeck.export` must not import ONNX Runtime, `import visiondeck.train` must not
import Lightning, and `visiondeck --help` must not import torch; yet `from visiondeck.export
import export_run` should work. Each package lists its public names and the module that
defines each; this module turns that table into the package's `__getattr__` and `__dir__`
(PEP 562), so the pattern is written once.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: name → defining module, imported on use.

    A module name with a dot is absolute (`visiondeck.export.bundle`); one without is a
    submodule of the package (`core` → `visiondeck.evaluate.core`). A resolved name is
    cached in the package's namespace, so the import happens once.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = module if "." in module else f"{package}.{module}"
        value = getattr(importlib.import_module(target), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*names, *namespace.get("__all__", ())})

    return __getattr__, __dir__
