"""Streaming a built-in data set's file from its publisher, never trusted before it is checked.

The bytes go to a hidden temporary file beside their destination; the caller checks them
(each data set has its own published digest) and renames the file into place, so an
interrupted, truncated or altered download never looks like a good file.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from visiondeck.errors import DatasetNotFoundError

__all__ = ["download_to_temporary"]

_CHUNK = 1 << 20


@contextmanager
def download_to_temporary(url: str, folder: Path, *, prefix: str, timeout: float,
                          failed: str, hint: str) -> Iterator[Path]:
    """`url`'s bytes in a temporary file of `folder`, removed on exit unless renamed away.

    A network failure raises DatasetNotFoundError("{failed}: {reason}", hint=hint).
    """
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{prefix}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
            except (OSError, http.client.HTTPException) as exc:
                reason = (f"HTTP {exc.code} {exc.reason}"
                          if isinstance(exc, urllib.error.HTTPError)
                          else getattr(exc, "reason", None) or exc)
                raise DatasetNotFoundError(f"{failed}: {reason}", hint=hint) from exc
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)
