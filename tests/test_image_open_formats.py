"""Issue 18 (5): no Pillow plugin outside the allow-list ever parses untrusted bytes.

`Image.open` without `formats=` lets Pillow try every plugin it has on the bytes - ICO,
TGA, EPS, JPEG 2000, PCX... - before anything of ours refuses them. Two guards:
the source tree is read for `Image.open` calls without `formats=` (so a new one cannot
slip in), and refused files are fed to every decoding entry point with each plugin
outside `imaging.ALLOWED_FORMATS` spied on.
"""

from __future__ import annotations

import ast
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from visiondeck.imaging import ALLOWED_FORMATS, ImageDecodeError, Problem, decode_image, probe_image

ROOT = Path(__file__).resolve().parents[1]
#: the shipped code and the tools that run beside it; tests open images they made themselves
SCANNED = ("src", "deploy", "benchmarks", "scripts")


def _python_files() -> Iterator[Path]:
    """Our .py files, never descending into virtualenvs or caches (hidden folders)."""
    for top in SCANNED:
        for folder, subfolders, files in os.walk(ROOT / top):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")
                                   and d not in ("site-packages", "__pycache__"))
            yield from (Path(folder) / f for f in sorted(files) if f.endswith(".py"))


def _is_pillow_open(func: ast.expr) -> bool:
    """`Image.open` / `PIL.Image.open` (any alias ending in .Image)."""
    if not (isinstance(func, ast.Attribute) and func.attr == "open"):
        return False
    owner = func.value
    return (isinstance(owner, ast.Name) and owner.id == "Image") or (
        isinstance(owner, ast.Attribute) and owner.attr == "Image")


def _offences(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "PIL.Image" and any(
                alias.name == "open" for alias in node.names):
            yield node.lineno, "imports PIL.Image.open under another name"
        if not isinstance(node, ast.Call):
            continue
        if _is_pillow_open(node.func):
            formats = [k for k in node.keywords if k.arg == "formats"]
            if len(node.args) >= 3:
                continue  # formats given by position
            if not formats or (isinstance(formats[0].value, ast.Constant)
                               and formats[0].value.value is None):
                yield node.lineno, "Image.open without formats="
        elif isinstance(node.func, ast.Attribute) and node.func.attr == "Parser" and (
                isinstance(node.func.value, ast.Name) and node.func.value.id == "ImageFile"):
            yield node.lineno, "ImageFile.Parser tries every plugin"


def test_every_image_open_in_the_project_names_its_formats() -> None:
    offences, seen = [], 0
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        seen += sum(isinstance(n, ast.Call) and _is_pillow_open(n.func) for n in ast.walk(tree))
        offences += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in
                     _offences(tree)]
    assert seen >= 4, "the scan found too few Image.open calls: is it looking at the tree?"
    assert not offences, "\n".join(offences)


def test_the_scan_catches_the_forms_it_must() -> None:
    bad = ("Image.open(f)\nPIL.Image.open(f, 'r')\nImage.open(f, formats=None)\n"
           "from PIL.Image import open as o\nImageFile.Parser()\n")
    assert sorted(line for line, _ in _offences(ast.parse(bad))) == [1, 2, 3, 4, 5]
    good = "Image.open(f, formats=('PNG',))\nImage.open(f, 'r', ['PNG'])\nx.open(f)\n"
    assert list(_offences(ast.parse(good))) == []


# ------------------------------------------------------------------ the plugins themselves


def _saved(fmt: str, mode: str = "RGB", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (16, 16), 90).save(buffer, fmt, **options)
    return buffer.getvalue()


REFUSED = {
    "ICO": lambda: _saved("ICO"),
    "TGA": lambda: _saved("TGA"),
    "EPS": lambda: _saved("EPS"),
    "PCX": lambda: _saved("PCX"),
    "JPEG2000": lambda: _saved("JPEG2000"),
    "PPM": lambda: _saved("PPM"),
    "SGI": lambda: _saved("SGI"),
    "XBM": lambda: _saved("XBM", "1"),
    "DDS": lambda: _saved("DDS", "RGBA"),
}


@pytest.fixture
def plugin_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every plugin outside the allow-list, spied on: its `accept` check and its opener."""
    Image.init()
    calls: list[str] = []
    for fmt, (factory, accept) in list(Image.OPEN.items()):
        if fmt in ALLOWED_FORMATS:
            continue

        def spy_factory(*args: object, _fmt: str = fmt, _real: object = factory) -> object:
            calls.append(f"{_fmt} opened")
            return _real(*args)  # type: ignore[operator]

        def spy_accept(prefix: bytes, _fmt: str = fmt, _real: object = accept) -> object:
            calls.append(f"{_fmt} accept")
            return _real(prefix)  # type: ignore[operator]

        monkeypatch.setitem(Image.OPEN, fmt, (spy_factory, spy_accept if accept else None))
    return calls


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_formats_never_reach_their_pillow_plugin(name: str, plugin_calls: list[str],
                                                         tmp_path: Path) -> None:
    from tests.deploy.conftest import write_colour_bundle
    from visiondeck.export.bundle import load_bundle
    from visiondeck.serve.errors import error_answer
    from visiondeck.serve.inference.preprocess import is_small_image, prepare_image

    data = REFUSED[name]()
    with Image.open(io.BytesIO(data)) as im:  # the spy works: Pillow itself would read it
        assert im.format is not None
    assert plugin_calls, "the spy saw nothing"
    plugin_calls.clear()

    for call in (decode_image, probe_image):
        with pytest.raises(ImageDecodeError) as caught:
            call(data)
        assert caught.value.problem in (Problem.UNSUPPORTED_FORMAT, Problem.NOT_AN_IMAGE)
    assert not is_small_image(data)
    bundle = load_bundle(write_colour_bundle(tmp_path / "bundle"))
    with pytest.raises(ImageDecodeError) as served:
        prepare_image(data, bundle, max_bytes=10**6, max_pixels=10**7)
    assert error_answer(served.value)[0] == 415
    assert plugin_calls == []
