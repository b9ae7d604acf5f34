"""Files a resume reads back are written whole: through `visiondeck._files`, which keeps the
old file when a write fails halfway."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from visiondeck import _files
from visiondeck._files import atomic_path, atomic_write_json, atomic_write_text, atomic_writer


class _Unserialisable:
    pass


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))  # hidden temporaries included


def test_a_value_failing_to_serialise_halfway_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "history.json"
    atomic_write_json(target, [{"epoch": 1, "val_acc": 0.5}])
    before = target.read_bytes()
    # thousands of good rows are streamed into the temporary before the bad one is reached
    rows = [{"epoch": i, "val_acc": i / 10_000} for i in range(5000)] + [_Unserialisable()]
    with pytest.raises(TypeError):
        atomic_write_json(target, rows)
    assert target.read_bytes() == before
    assert _names(tmp_path) == ["history.json"]  # no temporary left behind


def test_a_write_failing_midway_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    atomic_write_text(target, "old\n")
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate cannot be encoded as UTF-8
        atomic_write_text(target, "x" * 200_000 + "\ud800")
    with pytest.raises(RuntimeError), atomic_writer(target, binary=True) as handle:
        handle.write(b"half of a checkpoint")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["run.json"]
    atomic_write_json(target, {"ok": True})  # and a write that succeeds replaces it
    assert json.loads(target.read_text()) == {"ok": True}


def test_every_file_a_resume_reads_goes_through_the_helper(tiny_recipe, tmp_path,
                                                          monkeypatch) -> None:
    """Train two epochs, crash, resume: every file `resume` (and the later stages) reads
    was written through `_files.atomic_path`, never straight to its name."""
    from tests.factories import crash_at_epoch
    from visiondeck.train.runner import resume, train

    written: list[Path] = []
    real = _files.private_tmp

    def recording(path):
        written.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(_files, "private_tmp", recording)
    run = tmp_path / "runs" / "atomic"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_recipe("train.epochs=2"), run_dir=run, progress=False,
              callbacks=[crash_at_epoch(1)])
    resume(run, progress=False)
    run = run.resolve()
    for name in ("run.json", "history.json", "history.csv", "classes.json",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt", "model/model.json",
                 "model/weights.safetensors"):
        assert run / name in written, name
    prepared = {p.name for p in written if run not in p.parents}  # the split's folder
    assert {"split.csv", "split.json", "catalog.jsonl"} <= prepared
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_a_killed_writers_temporary_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    """What a SIGKILL mid-write leaves (`.last.ckpt.PID.TID.tmp`, seen beside a resumed run)
    goes; a temporary whose writer still runs, and files of other names, stay."""
    import signal
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "checkpoints").mkdir()
        stale = tmp_path / "checkpoints" / f".last.ckpt.{dead.pid}.140206091045760.tmp"
        running = tmp_path / "checkpoints" / f".last.ckpt.{live.pid}.1.tmp"
        mine = _files.private_tmp(tmp_path / "run.json")
        other = tmp_path / ".notes.tmp"
        for path in (stale, running, mine, other):
            path.write_bytes(b"half")
        assert _files.remove_stale_temporaries(tmp_path) == [stale]
        assert not stale.exists() and running.exists() and mine.exists() and other.exists()
    finally:
        live.kill()
        live.wait()
