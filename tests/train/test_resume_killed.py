"""A run SIGKILLed at random moments and resumed until it finishes leaves the files a user reads
exactly as an uninterrupted run of the same recipe does.

`test_atomic_files` and `test_resume_finished` raise inside the process; here the real CLI is
killed from outside (no `except`, no `finally`), at moments drawn by a seeded generator over
the window the reference run spent fitting, then `visiondeck train --resume` continues it
(and may be killed again). Both runs use `train.deterministic=true` on the CPU, so everything
but wall-clock readings must match bit for bit.

Each run works in its own folder with the same relative `output_dir` and `name`, so
recipe.yaml is identical and every absolute path differs only by that folder, which is
replaced by `<cwd>` before comparing.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.factories import write_learnable

EPOCHS = 6
SEEDS = (0, 1)
KILLS_PER_SEED = 3
LAUNCH_TIMEOUT_S = 240  # generous: a busy 2-core machine, torch + Lightning imports

#: run.json fields that hold wall-clock readings, never equal between two runs
RUN_JSON_CLOCKS = ("updated", "duration_s")
#: history rows' wall-clock column (elapsed training time, carried across a resume)
HISTORY_CLOCK = "time_s"
#: history columns left out of the killed-run comparison for a known defect (none now:
#: `skipped_files` was written one epoch late until it was logged from training_step)
HISTORY_KNOWN_BUG: tuple[str, ...] = ()


def _overrides(data: Path) -> list[str]:
    return [
        f"data.source={data}", "data.image_size=16", "data.channels=3", "data.augment=none",
        "data.cache=memory", "data.num_workers=1", "data.val_fraction=0.25",
        "data.test_fraction=0.25", "model.name=simple_cnn", f"train.epochs={EPOCHS}",
        "train.batch_size=16", "train.lr=0.01", "train.deterministic=true",
        "train.min_val_accuracy=0.0",  # the gate's verdict is part of what run.json reports
        "tracking.enabled=false",  # the MLflow side is covered by test_resume_finished
        "output_dir=runs", "name=tiny",
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["COLUMNS"] = "200"
    return env


def _launch(cwd: Path, args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen([sys.executable, "-m", "visiondeck", *args], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, env=_env())


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _await_fit(proc: subprocess.Popen, run_json: Path, before: tuple[int, int] | None
               ) -> float | None:
    """When this process wrote run.json as "running" (just before `trainer.fit`), or None if
    it exited first (a resumed run that had already finished writes nothing)."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        stamp = _stamp(run_json)
        if stamp is not None and stamp != before:
            return time.monotonic()
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no run.json within {LAUNCH_TIMEOUT_S} s")


@dataclass
class Reference:
    cwd: Path
    run: Path
    fit_window_s: float  # from run.json "running" to the process's exit


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable(tmp_path_factory.mktemp("killed_data") / "images")


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The same recipe trained once, never interrupted, through the same CLI."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    log = cwd / "train.log"
    proc = _launch(cwd, ["train", *_overrides(images)], log)
    started = _await_fit(proc, cwd / "runs" / "tiny" / "run.json", None)
    rc = proc.wait(timeout=LAUNCH_TIMEOUT_S)
    assert rc == 0 and started is not None, log.read_text()
    return Reference(cwd, cwd / "runs" / "tiny", time.monotonic() - started)


@dataclass
class Kill:
    launch: str  # "train" or "resume"
    delay_s: float
    epochs_checkpointed: int | None  # what last.ckpt held once the process was dead


def _checkpointed_epochs(run: Path) -> int | None:
    import torch

    last = run / "checkpoints" / "last.ckpt"
    if not last.exists():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) + 1


def _train_with_kills(images: Path, cwd: Path, seed: int, window_s: float) -> list[Kill]:
    """Train, SIGKILL at seeded random moments, resume; until a launch exits on its own.

    The moments are drawn within the reference run's fit window; a launch may run faster
    than the reference did (the machine's load changed), and end before its first kill:
    then the run is removed and trained again with the window halved, until a kill lands.
    """
    rng = random.Random(seed)
    run = cwd / "runs" / "tiny"
    for _ in range(8):
        kills = _kill_and_resume(images, cwd, rng, window_s)
        if kills:
            return kills
        shutil.rmtree(run)
        window_s /= 2
    return []


def _kill_and_resume(images: Path, cwd: Path, rng: random.Random, window_s: float
                     ) -> list[Kill]:
    run = cwd / "runs" / "tiny"
    log = cwd / "train.log"
    kills: list[Kill] = []
    launch = "train"
    while True:
        args = ["train", *_overrides(images)] if launch == "train" else \
            ["train", "--resume", "runs/tiny"]
        before = _stamp(run / "run.json")
        proc = _launch(cwd, args, log)
        fitting = _await_fit(proc, run / "run.json", before)
        if fitting is not None and len(kills) < KILLS_PER_SEED:
            # the first kill in the first half of the window, so every seed is killed at
            # least once even when this launch runs faster than the reference did
            delay = rng.uniform(0, window_s / 2 if not kills else window_s)
            try:
                proc.wait(timeout=max(0.0, delay - (time.monotonic() - fitting)))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append(Kill(launch, round(delay, 3), _checkpointed_epochs(run)))
                if kills[-1].epochs_checkpointed is None:  # nothing to resume: start again
                    shutil.rmtree(run)
                    launch = "train"
                else:
                    launch = "resume"
                continue
        rc = proc.wait(timeout=LAUNCH_TIMEOUT_S)
        assert rc == 0, f"{launch} exited {rc} after kills {kills}:\n{log.read_text()[-4000:]}"
        return kills


# --------------------------------------------------------------- what a user reads, compared


def _text(path: Path, cwd: Path) -> str:
    return path.read_text(encoding="utf-8").replace(str(cwd.resolve()), "<cwd>")


def _run_json(run: Path, cwd: Path) -> dict[str, Any]:
    info = json.loads(_text(run / "run.json", cwd))
    return {k: v for k, v in info.items() if k not in RUN_JSON_CLOCKS}


def _history(run: Path, cwd: Path, *, leave_out: tuple[str, ...] = ()
             ) -> tuple[list[dict], list[dict]]:
    rows = json.loads(_text(run / "history.json", cwd))
    with (run / "history.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    for row in (*rows, *table):
        assert row.pop(HISTORY_CLOCK) not in (None, "")
        for name in leave_out:
            row.pop(name, None)
    return rows, table


def _tensors_equal(a: Any, b: Any, where: str) -> None:
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(map(str, a)) == sorted(map(str, b)), where
        for key in a:
            _tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _tensors_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _checkpoint(path: Path) -> dict[str, Any]:
    """What a resume continues from; the loops' bookkeeping and the callbacks' timers and
    paths are Lightning's own business, the RNG states are ours (`callbacks.RngState`)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"epoch": state["epoch"], "global_step": state["global_step"],
            "state_dict": state["state_dict"], "optimizer_states": state["optimizer_states"],
            "lr_schedulers": state["lr_schedulers"], "rng": state["callbacks"]["RngState"]}


def _scalars(run: Path) -> dict[tuple[str, int], set[float]]:
    """Every TensorBoard scalar by (tag, step), over every event file (one per launch)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[tuple[str, int], set[float]] = {}
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                found.setdefault((tag, event.step), set()).add(event.value)
    return found


def _assert_same_run(ref: Reference, run: Path, cwd: Path, kills: list[Kill]) -> None:
    from safetensors.torch import load_file

    said = f"after kills {kills}"
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    ref_files = {p.relative_to(ref.run).as_posix() for p in ref.run.rglob("*") if p.is_file()}
    events = {f for f in files | ref_files if f.startswith("tensorboard/events.")}
    assert files - events == ref_files - events, said  # no temporaries, nothing missing
    for name in ("recipe.yaml", "classes.json", "model/model.json",
                 "tensorboard/hparams.yaml"):
        assert _text(run / name, cwd) == _text(ref.run / name, ref.cwd), f"{name} {said}"

    got, want = _run_json(run, cwd), _run_json(ref.run, ref.cwd)
    assert got["status"] == want["status"] == "passed", said
    for key in sorted(want.keys() | got.keys()):
        assert got.get(key) == want.get(key), f"run.json {key} {said}"

    rows, table = _history(run, cwd, leave_out=HISTORY_KNOWN_BUG)
    ref_rows, ref_table = _history(ref.run, ref.cwd, leave_out=HISTORY_KNOWN_BUG)
    assert [r["epoch"] for r in ref_rows] == list(range(1, EPOCHS + 1))
    assert rows == ref_rows, f"history.json {said}"
    assert table == ref_table, f"history.csv {said}"

    weights, ref_weights = (load_file(r / "model" / "weights.safetensors") for r in (run, ref.run))
    _tensors_equal(weights, ref_weights, f"weights.safetensors {said}")
    for name in ("last.ckpt", "best.ckpt"):
        _tensors_equal(_checkpoint(run / "checkpoints" / name),
                       _checkpoint(ref.run / "checkpoints" / name), f"{name} {said}")

    # an epoch cut short and run again logs its steps twice: with the same values
    scalars, ref_scalars = _scalars(run), _scalars(ref.run)
    assert scalars.keys() == ref_scalars.keys(), f"TensorBoard tags/steps {said}"
    for key, values in scalars.items():
        assert values == ref_scalars[key], f"TensorBoard {key} {said}"


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_and_resumed_run_matches_the_uninterrupted_one(
        seed: int, images: Path, reference: Reference, tmp_path: Path) -> None:
    kills = _train_with_kills(images, tmp_path, seed, reference.fit_window_s)
    assert kills, "no kill landed: the test exercised nothing"
    _assert_same_run(reference, tmp_path / "runs" / "tiny", tmp_path, kills)


_KILL_AT_TRAIN_END = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    from visiondeck.config import load_recipe
    from visiondeck.train.runner import train

    class KillAtTrainEnd(L.Callback):
        def on_train_end(self, trainer, module):
            os.kill(os.getpid(), signal.SIGKILL)

    train(load_recipe(None, sys.argv[1:]), progress=False, callbacks=[KillAtTrainEnd()])
""")


def test_killed_after_the_last_checkpoint_resumes_to_the_same_run(
        images: Path, reference: Reference, tmp_path: Path) -> None:
    """The narrow window a random kill rarely hits: every epoch is checkpointed, the best
    model and the final run.json are not written yet. The resumed fit runs no epoch, so the
    final metrics come from the last checkpoint (`EpochMetrics`), not from an empty loop."""
    log = tmp_path / "train.log"
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_TRAIN_END, *_overrides(images)],
                            cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT_S, check=False)
    run = tmp_path / "runs" / "tiny"
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _checkpointed_epochs(run) == EPOCHS
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    kills = [Kill("train", -1.0, EPOCHS)]
    resumed = _launch(tmp_path, ["train", "--resume", "runs/tiny"], log)
    assert resumed.wait(timeout=LAUNCH_TIMEOUT_S) == 0, log.read_text()[-4000:]
    _assert_same_run(reference, run, tmp_path, kills)


def test_history_rows_survive_a_resume(images: Path, reference: Reference, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every history row has every column, and a resumed run's rows are the uninterrupted
    run's rows, `skipped_files` included."""
    from tests.factories import crash_at_epoch
    from visiondeck.config import load_recipe
    from visiondeck.train.runner import resume, train

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_recipe(None, _overrides(images)), run_dir=run, progress=False,
              callbacks=[crash_at_epoch(2)])
    resume(run, progress=False)
    rows, _ = _history(run, tmp_path)
    ref_rows, _ = _history(reference.run, reference.cwd)
    # the same columns in every row and the same counts, exactly. Losses are not compared
    # here: this run trains in the test's own process, whose torch state other tests of
    # the suite have touched (its losses drifted by up to 3 % from the reference
    # subprocess's); the killed-run test above compares them bit for bit, run against run
    assert [sorted(r) for r in rows] == [sorted(r) for r in ref_rows]
    assert [r["skipped_files"] for r in rows] == [r["skipped_files"] for r in ref_rows]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref_rows]
    assert all("skipped_files" in row for row in ref_rows)
