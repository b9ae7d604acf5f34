"""Multi-process training launched by torchrun (the multi-node launcher), 2 CPU processes.

tests/train/test_ddp.py covers Lightning's own launcher (`train.devices=2`); this is the
launcher a cluster uses: `torchrun --nnodes=N --nproc_per_node=M -m visiondeck train ...`
starts every rank itself and Lightning joins the process group torchrun describes in the
environment (RANK, WORLD_SIZE, MASTER_ADDR...). One node, two processes, gloo on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.factories import tiny_ddp_overrides, write_learnable


def test_torchrun_two_processes_train_one_model(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "images")  # 72 images: 36 train after a 25/25 split
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "-m", "visiondeck", "train",
               *tiny_ddp_overrides(data, runs, "elastic")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VISIONDECK_RUN_DIR", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr  # two ranks joined
    finished = [p.parent for p in runs.glob("*/run.json")]
    assert len(finished) == 1, finished  # rank zero alone writes the outcome
    run = finished[0]
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    history = json.loads((run / "history.json").read_text())
    # 36 training images, batch 6: each of the two processes takes 3 steps an epoch
    assert [row["step"] for row in history] == [3, 6]
    assert (run / "model" / "weights.safetensors").exists()
    # torchrun starts the ranks side by side: rank zero names the folder in a marker file
    # the others wait for, and removes the marker once the run is over
    assert sorted(p.name for p in runs.iterdir()) == ["elastic"]
