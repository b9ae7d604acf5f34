"""Writing files so that a reader, or another process writing the same file, never sees half.

Several processes may prepare the same data at once (torchrun starts every rank side by
side; two pipelines may share a prepared folder): each writes to a temporary name of its
own (pid and thread in the name) and renames it over the target, which is atomic on POSIX,
so the last writer wins and every reader sees a whole file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["atomic_write_text", "private_tmp"]


def private_tmp(path: str | os.PathLike[str]) -> Path:
    """A temporary name beside `path` that no other process or thread uses."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    tmp = private_tmp(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
