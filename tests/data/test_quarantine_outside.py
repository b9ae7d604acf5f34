"""Quarantine never touches a file outside the data root, however the source names it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from tests.factories import pattern, png_bytes, write_class_folder
from visiondeck.cli import app
from visiondeck.data.catalog import scan
from visiondeck.data.validate import quarantine, validate

CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 8


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every name below `folder` (links by their own name, not followed) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def _outside_files(tmp_path: Path) -> Path:
    outside = tmp_path / "elsewhere"
    (outside / "dir").mkdir(parents=True)
    (outside / "absolute.png").write_bytes(CORRUPT)
    (outside / "dotdot.png").write_bytes(CORRUPT + b"1")
    (outside / "linked.png").write_bytes(CORRUPT + b"2")
    (outside / "dir" / "via_dir.png").write_bytes(CORRUPT + b"3")
    return outside


def test_check_quarantine_on_a_manifest_leaves_outside_files_alone(tmp_path: Path) -> None:
    outside = _outside_files(tmp_path)
    data = tmp_path / "data"
    write_class_folder(data, {"a": 4, "b": 4})
    (data / "a" / "bad.png").write_bytes(b"my notes, not a picture\n")
    full = png_bytes(pattern(42, 48))
    (data / "b" / "cut.png").write_bytes(full[: len(full) // 2])
    (data / "link.png").symlink_to(outside / "linked.png")
    (data / "linkdir").symlink_to(outside / "dir", target_is_directory=True)
    rows = [f"{p.relative_to(data).as_posix()},{p.parent.name}"
            for p in sorted(data.glob("[ab]/*.png"))]
    rows += [
        f"{outside / 'absolute.png'},a",
        "../elsewhere/dotdot.png,b",
        "link.png,a",
        "linkdir/via_dir.png,b",
    ]
    manifest = data / "labels.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    before = _snapshot(outside)

    dest = tmp_path / "q"
    result = CliRunner().invoke(app, ["data", "check", str(manifest), "--out",
                                      str(tmp_path / "prep"), "--quarantine",
                                      "--quarantine-dir", str(dest), "--workers", "1"])

    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 3, result.output  # problems found, as the README documents
    assert _snapshot(outside) == before  # same names, same bytes, nothing added or renamed
    assert "left 4 problem file(s) in place: outside the data root" in result.output
    for name in ("absolute.png", "dotdot.png", "linked.png", "via_dir.png"):
        assert f"outside the data root: {outside.resolve()}" in result.output
        assert name in result.output
    # the inside problems were quarantined and listed
    assert "quarantined 2 file(s)" in result.output
    assert not (data / "a" / "bad.png").exists() and not (data / "b" / "cut.png").exists()
    assert (dest / "not_an_image" / "a" / "bad.png").read_bytes() == b"my notes, not a picture\n"
    assert (dest / "truncated" / "b" / "cut.png").exists()
    listed = json.loads((dest / "quarantine.json").read_text())
    assert {(m["relpath"], m["moved_to"]) for m in listed} == {
        ("a/bad.png", "not_an_image/a/bad.png"), ("b/cut.png", "truncated/b/cut.png")}
    # the links inside the root are left too: they name outside files
    assert (data / "link.png").is_symlink() and (data / "linkdir").is_symlink()


def test_folder_source_with_links_out_of_the_root(tmp_path: Path) -> None:
    outside = _outside_files(tmp_path)
    data = tmp_path / "data"
    write_class_folder(data, {"a": 3, "b": 3})
    (data / "a" / "link.png").symlink_to(outside / "linked.png")
    (data / "evil").symlink_to(outside / "dir", target_is_directory=True)  # a class folder
    (data / "b" / "bad.png").write_bytes(CORRUPT)
    (data / "b" / "inner_link.png").symlink_to(data / "b" / "bad.png")  # stays inside
    before = _snapshot(outside)

    report = validate(scan(data, workers=1))
    result = quarantine(report, tmp_path / "q")

    assert _snapshot(outside) == before
    assert sorted(result.outside) == ["a/link.png", "evil/via_dir.png"]
    assert sorted(r for r, _ in result.moved) == ["b/bad.png", "b/inner_link.png"]
    assert result.failed == []
    assert (data / "a" / "link.png").is_symlink() and (data / "evil").is_symlink()
    assert os.readlink(tmp_path / "q" / "truncated" / "b" / "inner_link.png") == str(
        data / "b" / "bad.png")
    assert result.manifest is not None and result.manifest.exists()
