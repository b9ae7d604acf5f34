"""DDP with two CPU processes (gloo), launched the way users launch it: one command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.factories import tiny_ddp_overrides, write_learnable


def test_two_process_ddp_trains_one_run(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "images")  # 72 images: 36 train after a 25/25 split
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "visiondeck", "train",
               *tiny_ddp_overrides(data, runs, "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VISIONDECK_RUN_DIR", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # both ranks wrote into one folder
    run = runs / "ddp"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed"
    history = json.loads((run / "history.json").read_text())
    # 36 training images, batch 6: one process takes 6 steps an epoch, each of two takes 3
    assert [row["step"] for row in history] == [3, 6]
    assert (run / "model" / "weights.safetensors").exists()
