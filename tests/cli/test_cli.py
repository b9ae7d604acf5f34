"""The command line: instant help, no heavy imports, exit codes, real commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.factories import EXPECTED_STATUS
from visiondeck.cli import app

runner = CliRunner()
HEAVY = ("torch", "torchvision", "lightning", "timm", "mlflow", "onnxruntime", "onnx",
         "pytorch_grad_cam", "matplotlib", "sklearn")


def _imported(stderr: str) -> set[str]:
    """Every module `python -X importtime` reported loading."""
    names = set()
    for line in stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and fields[0].strip().isdigit():
            names.add(fields[2].strip())
    return names


def test_help_imports_nothing_heavy() -> None:
    """`visiondeck --help` answers from typer alone: no torch, Lightning, timm, MLflow or
    ONNX Runtime is loaded. That is what keeps it fast; the seconds themselves depend on the
    machine's load and belong to a benchmark, not to a test."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "visiondeck", "--help"],
                          capture_output=True, text=True, timeout=120, check=True)
    imported = _imported(done.stderr)
    assert {"typer", "visiondeck.cli", "visiondeck.cli.train_cmd"} <= imported  # it did parse
    assert sorted(n for n in imported if n.split(".")[0] in HEAVY) == []
    listed = " ".join(done.stdout.split())
    names = sorted(typer.main.get_command(app).commands)  # what click dispatches to
    assert len(names) > 20
    for name in names:
        assert f" {name} " in listed, name


def test_import_visiondeck_is_light() -> None:
    probe = ("import sys, visiondeck\n"
             "assert visiondeck.load_recipe is not None\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_data_check_names_problems_and_exits_3(messy_folder: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(messy_folder), "--out",
                                 str(tmp_path / "prep"), "--workers", "1"])
    assert result.exit_code == 3, result.output
    for status in set(EXPECTED_STATUS.values()):
        assert status in result.output
    report = json.loads((tmp_path / "prep" / "data_report.json").read_text())
    assert {p["relpath"]: p["status"] for p in report["problems"]} == EXPECTED_STATUS


def test_data_check_quarantine_then_clean(messy_folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "q"
    result = runner.invoke(app, ["data", "check", str(messy_folder), "--out",
                                 str(tmp_path / "prep"), "--quarantine", "--quarantine-dir",
                                 str(dest), "--workers", "1"])
    assert result.exit_code == 3 and f"quarantined {len(EXPECTED_STATUS)} file(s)" in result.output
    again = runner.invoke(app, ["data", "check", str(messy_folder), "--out",
                                str(tmp_path / "prep"), "--workers", "1"])
    assert again.exit_code == 0, again.output


def test_data_split_writes_then_reuses(clean_folder: Path, tmp_path: Path) -> None:
    args = ["data", "split", str(clean_folder), "--out", str(tmp_path / "p"), "--seed", "5"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "wrote split" in first.output
    assert (tmp_path / "p" / "split.csv").exists()
    second = runner.invoke(app, args)
    assert "reused unchanged split" in second.output
    changed = runner.invoke(app, [*args[:-1], "6"])
    assert changed.exit_code == 4 and "--force" in changed.output


def test_config_show_applies_overrides() -> None:
    result = runner.invoke(app, ["config", "show", "configs/sample.yaml", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    assert "epochs: 3" in result.output and "image_size: 28" in result.output
    bad = runner.invoke(app, ["config", "show", "configs/sample.yaml", "train.epoch=3"])
    assert bad.exit_code == 2


def test_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "visiondeck", "data", "check",
                           str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert done.returncode == 4
    assert "data source not found" in done.stderr and "Traceback" not in done.stderr


def test_demo_trains_on_the_bundled_sample(tmp_path: Path) -> None:
    """The README's demo command: the pipeline on the bundled sample (2 epochs here).

    Two epochs may or may not reach the demo's gate (val_acc ≥ 0.75); whichever it was, the
    exit code, the registry step and the message follow from the recorded metrics.
    """
    done = subprocess.run(
        [sys.executable, "-m", "visiondeck", "demo", "--workdir", str(tmp_path / "demo"),
         "--epochs", "2"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    log = done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / "demo" / "runs" / "demo"
    info = json.loads((run / "run.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert info["epochs_run"] == 2 and [row["epoch"] for row in history] == [1, 2]
    gate = info["gate"]
    assert (gate["metric"], gate["threshold"]) == ("val_acc", 0.75)
    # the gate judged the best epoch's validation accuracy, as the history recorded it
    assert gate["value"] == pytest.approx(max(row["val_acc"] for row in history), abs=1e-6)
    passed = gate["value"] >= 0.75
    assert gate["passed"] is passed
    assert info["status"] == ("passed" if passed else "failed_gate")
    assert done.returncode == (0 if passed else 5), log
    assert ("demo finished" in done.stdout) is passed, log
    assert ("failed its quality gate" in done.stdout) is not passed, log
    # Lightning's start-up notes and adverts stay out of the user's terminal
    output = done.stdout + done.stderr
    assert "litlogger" not in output and "GPU available" not in output, log
    assert "LeafSpec" not in output, log
    # the whole pipeline ran: an evaluated, exported model, every step in the state file
    assert (run / "model" / "weights.safetensors").exists()
    assert (run / "evaluation" / "metrics.json").is_file()
    assert (run / "bundle" / "model.onnx").is_file()
    state = json.loads((tmp_path / "demo" / "runs" / "pipeline" / "demo" / "state.json")
                       .read_text())
    steps = ("check", "split", "train", "evaluate", "export", "register", "promote")
    assert tuple(state["steps"]) == steps
    assert all(state["steps"][s]["status"] == "ran" for s in steps[:5])
    # a gate failure is a refusal to register (and nothing to promote), never a crash
    assert state["steps"]["register"]["status"] == ("ran" if passed else "refused")
    assert state["steps"]["promote"]["status"] == ("ran" if passed else "off")
