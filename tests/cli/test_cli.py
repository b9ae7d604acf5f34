"""The command line: instant help, no heavy imports, exit codes, real commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from tests.factories import EXPECTED_STATUS
from visiondeck.cli import app

runner = CliRunner()
HEAVY = ("torch", "torchvision", "lightning", "timm", "mlflow", "onnxruntime")


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['visiondeck', '--help']\n"
        "from visiondeck.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    elapsed = time.perf_counter() - start
    assert "HEAVY=" in done.stderr and done.stderr.strip().endswith("HEAVY="), done.stderr
    assert "data" in done.stdout and "config" in done.stdout
    assert elapsed < 2.0, f"visiondeck --help took {elapsed:.2f}s"


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


def test_demo_trains_on_the_bundled_sample(tmp_path) -> None:
    """The README's demo command: the pipeline on the bundled sample (2 epochs here)."""
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "visiondeck", "demo", "--workdir", str(tmp_path / "demo"),
         "--epochs", "2"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode in (0, 5), done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / "demo" / "runs" / "demo"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] in ("passed", "failed_gate")
    assert info["epochs_run"] == 2 and (run / "model" / "weights.safetensors").exists()
    assert "demo finished" in done.stdout or done.returncode == 5
    # the whole pipeline ran: an evaluated, exported model, every step in the state file
    assert (run / "evaluation" / "metrics.json").is_file()
    assert (run / "bundle" / "model.onnx").is_file()
    state = json.loads((tmp_path / "demo" / "runs" / "pipeline" / "demo" / "state.json")
                       .read_text())
    steps = ("check", "split", "train", "evaluate", "export", "register", "promote")
    assert tuple(state["steps"]) == steps
    assert all(state["steps"][s]["status"] == "ran" for s in steps[:5])
    # a gate failure (exit 5) is a refusal to register, never a crash
    assert state["steps"]["register"]["status"] == ("ran" if done.returncode == 0
                                                     else "refused")
