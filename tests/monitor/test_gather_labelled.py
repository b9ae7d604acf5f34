"""`gather_labelled`: labelled predictions → class folders of the images the server kept.

The records are real `PredictionRecord`s and the kept images sit where the server's upload
keeper puts them (`kept_path`), so every count below is worked out from known inputs.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.factories import pattern, png_bytes
from visiondeck.monitor.retrain import gather_labelled
from visiondeck.serve.history.store import PredictionRecord
from visiondeck.serve.monitoring.upload_archive import kept_path

CLASSES = ["left", "middle", "right"]
START = datetime(2025, 5, 1, tzinfo=UTC)


def _keep(uploads: Path, seed: int) -> str:
    """Keep one picture as the server would; its SHA-256."""
    data = png_bytes(pattern(seed, 16))
    sha = hashlib.sha256(data).hexdigest()
    path = kept_path(uploads, sha, data[:32])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha


def _records(labels: list[tuple[str, str | None]]) -> list[PredictionRecord]:
    """One stored prediction per (image SHA-256, label), oldest first."""
    return [PredictionRecord(id=f"p{i}", created_at=START + timedelta(minutes=i),
                             model_name="tiny", model_version="v1", predicted="left",
                             confidence=0.9, unknown=False, top_k=[], latency_ms=1.0,
                             image_sha256=sha, image_width=16, image_height=16, label=label)
            for i, (sha, label) in enumerate(labels)]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_latest_label_wins_and_every_skip_is_counted(tmp_path: Path) -> None:
    uploads = tmp_path / "kept"
    a, b, c, d = (_keep(uploads, seed) for seed in range(4))
    never_kept = hashlib.sha256(b"an upload the server did not keep").hexdigest()
    records = _records([
        (a, "left"), (b, "right"), (a, "right"),  # a relabelled…
        (c, None),                                  # never labelled: not gathered
        (d, "cat"), (d, "cat"), (b, "dog"),         # names no class of the model
        (never_kept, "middle"),                     # labelled, but its image is gone
        (b, "right"),                               # the same label again: no relabel
        (a, "left"),                                # …and back: still one image relabelled
    ])
    gathered = gather_labelled(records, uploads, tmp_path / "out", CLASSES)

    assert gathered.per_class == {"left": 1, "right": 1}
    assert gathered.relabelled == 1
    assert gathered.unknown_labels == {"cat": 2, "dog": 1}
    assert gathered.missing_images == 1
    out = (tmp_path / "out").resolve()
    assert sorted(gathered.files) == sorted([(out / "left" / f"{a}.png", "left"),
                                             (out / "right" / f"{b}.png", "right")])
    assert _tree(tmp_path / "out") == {
        f"left/{a}.png": kept_path(uploads, a, b"\x89PNG\r\n\x1a\n").read_bytes(),
        f"right/{b}.png": kept_path(uploads, b, b"\x89PNG\r\n\x1a\n").read_bytes()}


def test_a_later_gathering_moves_relabelled_images_and_copies_nothing_twice(
        tmp_path: Path) -> None:
    uploads, out = tmp_path / "kept", tmp_path / "out"
    a, b = _keep(uploads, 10), _keep(uploads, 11)
    first = [(a, "left"), (b, "right")]
    gather_labelled(_records(first), uploads, out, CLASSES)
    b_file = out / "right" / f"{b}.png"
    b_file.write_bytes(b"a copy left alone")  # a gathering copies only what is missing

    again = gather_labelled(_records([*first, (a, "middle")]), uploads, out, CLASSES)
    assert sorted(_tree(out)) == [f"middle/{a}.png", f"right/{b}.png"]  # no stale left/ copy
    assert b_file.read_bytes() == b"a copy left alone"
    assert again.per_class == {"middle": 1, "right": 1} and again.relabelled == 1


def test_a_stale_copy_with_another_extension_is_replaced(tmp_path: Path) -> None:
    """The label folder is keyed by SHA-256, not by file name: an earlier copy of the same
    image under another extension (or label) never stays beside the new one."""
    uploads, out = tmp_path / "kept", tmp_path / "out"
    a = _keep(uploads, 20)
    (out / "right").mkdir(parents=True)
    (out / "right" / f"{a}.img").write_bytes(b"old")
    gathered = gather_labelled(_records([(a, "left")]), uploads, out, CLASSES)
    assert sorted(_tree(out)) == [f"left/{a}.png"]
    assert gathered.relabelled == 0  # relabels are counted within the records given


@pytest.mark.parametrize("sha", ["", "../../etc/passwd", "AB" * 32, "a" * 63])
def test_hashes_that_name_no_kept_file_are_missing_not_read(tmp_path: Path, sha: str) -> None:
    uploads = tmp_path / "kept"
    _keep(uploads, 30)
    gathered = gather_labelled(_records([(sha, "left")]), uploads, tmp_path / "out", CLASSES)
    assert gathered.files == [] and gathered.missing_images == 1
    assert not (tmp_path / "out").exists() or _tree(tmp_path / "out") == {}
