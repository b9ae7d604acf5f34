"""Files written whole, and content digests of files and folders.

Writing: a reader, or another process writing the same file, never sees half a file, and a
write that fails halfway (a value that cannot be serialised, a full disk, a kill) leaves the
previous file exactly as it was. Every file a resume or a later stage reads back (run.json,
history, checkpoints, split, catalog, pipeline state, mlflow.json...) goes through
`atomic_path` or one of the helpers built on it; this is the one home of that rule.

Several processes may prepare the same data at once (torchrun starts every rank side by
side; two pipelines may share a prepared folder): each writes to a temporary name of its
own (pid and thread in the name), syncs it to disk and renames it over the target, which is
atomic on POSIX, so the last writer wins and every reader sees a whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "atomic_writer", "file_sha256", "private_tmp", "remove_stale_temporaries", "tree_sha256",
]  # fmt: skip


def private_tmp(path: str | os.PathLike[str]) -> Path:
    """A temporary name beside `path` that no other process or thread uses."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove, under `folder`, the `private_tmp` files of writers that were killed mid-write
    (SIGKILL leaves the temporary; its content never reached the real name). Only files
    whose writer process is gone are removed: a live writer's temporary is left alone.
    Returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # ".NAME", PID, TID, "tmp"
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A private temporary path to write `path`'s new content to (for writers that want a
    file name, e.g. safetensors): synced and renamed over `path` when the block ends
    normally, removed when it raises, so `path` holds either the old or the new content."""
    path = Path(path)
    tmp = private_tmp(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], *, binary: bool = False,
                  newline: str | None = None) -> Iterator[IO[Any]]:
    """An open file (UTF-8 text, or bytes with `binary`) whose content replaces `path` only
    when the block ends normally."""
    with atomic_path(path) as tmp:
        if binary:
            with open(tmp, "wb") as handle:
                yield handle
        else:
            with open(tmp, "w", encoding="utf-8", newline=newline) as handle:
                yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_writer(path) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_writer(path, binary=True) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None,
                      allow_nan: bool = True) -> Path:
    """`value` as JSON (and a final newline), streamed into a temporary: a value that fails
    to serialise halfway through leaves the previous file untouched."""
    with atomic_writer(path) as handle:
        json.dump(value, handle, indent=indent, default=default, allow_nan=allow_nan)
        handle.write("\n")
    return Path(path)


def _fsync(path: Path) -> None:
    """Flush a finished temporary to disk before the rename makes it the file, so a crash
    after the rename cannot leave an empty file under the real name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
