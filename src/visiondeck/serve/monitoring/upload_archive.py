"""Keep uploaded images (off by default), so labelled predictions can be retrained on.

With `VISIONDECK_KEEP_UPLOADS=DIR`, every image a prediction was made from is written to
`DIR/<sha256[:2]>/<sha256><ext>` (the extension from the sniffed format), the same bytes the
client sent. Content addressing means a picture sent a thousand times is stored once, and
`visiondeck retrain` finds the image of any stored prediction from its `image_sha256`.

Writing happens on one background thread, never on the request path; the queue is bounded
(`max_pending` images), and a full queue drops the newest image rather than slow a
prediction (counted in `dropped`). Each file is at most the server's upload limit, because
only uploads that passed it reach a prediction; files are written to a temporary name and
renamed, so a reader never sees half an image.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

from visiondeck.imaging import sniff_format
from visiondeck.serve.monitoring.observers import PredictionEvent

__all__ = ["EXTENSIONS", "UploadKeeper", "kept_path"]

log = logging.getLogger("visiondeck.serve")
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp",
              "BMP": ".bmp"}


def kept_path(root: str | os.PathLike[str], sha256: str, data_head: bytes) -> Path:
    """Where an upload with this hash and these first bytes is kept."""
    ext = EXTENSIONS.get(sniff_format(data_head) or "", ".img")
    return Path(root) / sha256[:2] / f"{sha256}{ext}"


class UploadKeeper:
    """An observer that writes each prediction's upload to a content-addressed folder."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int,
                 max_pending: int = 256) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.written = self.dropped = self.failures = 0

    def observe(self, event: PredictionEvent) -> None:
        data = event.extra.get("upload")
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) > self.max_bytes:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait((event.image_sha256, bytes(data)))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Write what is queued, then stop."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._thread = None

    def flush(self) -> None:
        """Wait until every queued upload is on disk (tests, shutdown)."""
        self._queue.join()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="visiondeck-keep-uploads")
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except OSError as exc:
                self.failures += 1
                log.warning("could not keep an upload in %s: %s", self.root, exc)
            finally:
                self._queue.task_done()

    def _write(self, sha256: str, data: bytes) -> None:
        path = kept_path(self.root, sha256, data[:32])
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.written += 1
