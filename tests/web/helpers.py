"""What the browser tests share: test pictures, uploads, waits on cards, downloads."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.serve.conftest import learnable_png
from tests.web.conftest import Page

__all__ = ["EXPECTED_STATUS", "api_predict", "dispatch_file", "done_cards", "downloaded",
           "element_png", "upload", "write_image"]

EXPECTED_STATUS = ("status of 415", "status of 404")  # refusals the tests provoke on purpose


def write_image(folder: Path, cls: str, seed: int = 0) -> Path:
    """A 96 px picture of class `cls` (the model reads it at 16 px), saved as PNG."""
    path = folder / f"{cls}-{seed}.png"
    path.write_bytes(learnable_png(cls, size=96, seed=seed))
    return path


def upload(page: Page, *paths: Path) -> None:
    page.find("#file-input").send_keys("\n".join(str(p) for p in paths))


def done_cards(page: Page, count: int) -> list:
    page.wait(lambda: len(page.find_all(".card.done, .card.failed")) >= count,
              what=f"{count} finished cards")
    return page.find_all(".card")


def api_predict(page: Page, data: bytes) -> dict:
    response = httpx.post(page.server.url + "/predict", files={"file": data}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def dispatch_file(page: Page, data: bytes, name: str, how: str) -> None:
    """Drop a file on the drop zone, or paste it, the way the browser delivers them."""
    page.js("""
        const [b64, name, how] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        const init = { bubbles: true, cancelable: true };
        if (how === "drop") {
          document.getElementById("dropzone").dispatchEvent(
            new DragEvent("drop", { ...init, dataTransfer: transfer }));
        } else {
          document.body.dispatchEvent(
            new ClipboardEvent("paste", { ...init, clipboardData: transfer }));
        }""", base64.b64encode(data).decode(), name, how)


def element_png(element) -> np.ndarray:
    element.parent.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("RGB"),
                      dtype=np.int16)


def downloaded(page: Page, suffix: str, before: set[Path]) -> Path:
    folder: Path = page.driver.downloads

    def ready() -> Path | None:
        new = [p for p in folder.iterdir() if p not in before and p.suffix == suffix]
        return new[0] if new and not list(folder.glob("*.crdownload")) else None

    return page.wait(ready, what=f"a downloaded {suffix} file")
