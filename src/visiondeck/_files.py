"""Files written whole, and content digests of files and folders.

Writing: a reader, or another process writing the same file, never sees half a file.

Several processes may prepare the same data at once (torchrun starts every rank side by
side; two pipelines may share a prepared folder): each writes to a temporary name of its
own (pid and thread in the name) and renames it over the target, which is atomic on POSIX,
so the last writer wins and every reader sees a whole file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

__all__ = ["atomic_write_text", "file_sha256", "private_tmp", "tree_sha256"]


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(folder: str | os.PathLike[str]) -> str:
    """sha256 over every visible file below `folder` (relative names and contents).

    Order-free and blind to hidden files, such as an interrupted atomic write's temporary.
    """
    root = Path(folder)
    outer = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        outer.update(f"{rel}\0{file_sha256(path)}\n".encode())
    return outer.hexdigest()
