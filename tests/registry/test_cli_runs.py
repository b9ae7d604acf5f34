"""`visiondeck runs list / show / diff`, `visiondeck ui`, and `train` tracking by default."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from visiondeck.cli import app
from visiondeck.registry.store import read_link

runner = CliRunner()
WIDE = {"COLUMNS": "220"}


def _run(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


def test_runs_list_shows_every_run_with_verdict_and_metrics(tracked) -> None:
    result = _run("runs", "list", "--runs-dir", str(tracked.runs_root))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    alpha = next(line for line in lines if " alpha " in line)
    beta = next(line for line in lines if " beta " in line)
    assert "passed" in alpha and "completed" in beta and "train" in alpha
    assert "best_val_acc" in result.output and "val_acc" in result.output
    assert read_link(tracked.alpha).run_id[:8] in alpha
    assert lines.index(beta) < lines.index(alpha)  # newest first
    only = _run("runs", "list", "--runs-dir", str(tracked.runs_root), "--experiment", "beta")
    assert " beta " in only.output and " alpha " not in only.output


def test_runs_show_by_name_folder_and_id_prefix(tracked) -> None:
    run_id = read_link(tracked.alpha).run_id
    for ref in ("alpha", str(tracked.alpha), run_id[:10]):
        result = _run("runs", "show", ref, "--runs-dir", str(tracked.runs_root))
        assert result.exit_code == 0, (ref, result.output)
        assert run_id in result.output and "passed" in result.output
    out = result.output
    assert "per epoch" in out and "train.epochs" in out and "simple_cnn" in out
    assert "visiondeck.data_fingerprint" in out and "recipe.yaml" in out
    missing = _run("runs", "show", "no-such-run", "--runs-dir", str(tracked.runs_root))
    assert missing.exit_code == 9 and "no run 'no-such-run'" in missing.output


def test_runs_diff_puts_metrics_side_by_side_and_lists_recipe_differences(tracked) -> None:
    result = _run("runs", "diff", "alpha", str(tracked.beta), "--runs-dir",
                  str(tracked.runs_root))
    assert result.exit_code == 0, result.output
    out = result.output
    lr = next(line for line in out.splitlines() if "train.lr" in line)
    assert "0.01" in lr and "0.003" in lr
    name = next(line for line in out.splitlines() if line.strip().startswith("name"))
    assert "alpha" in name and "beta" in name
    assert "train.min_val_accuracy" in out  # alpha had a gate, beta none
    assert "train.epochs" not in out  # identical keys are counted, not listed
    assert "keys identical" in out
    val_acc = next(line for line in out.splitlines() if line.strip().startswith("val_acc "))
    assert val_acc.count(".") >= 2  # one value per run
    one = _run("runs", "diff", "alpha", "--runs-dir", str(tracked.runs_root))
    assert one.exit_code == 9 and "at least two" in one.output


def test_runs_commands_say_when_there_is_no_store(tmp_path) -> None:
    result = _run("runs", "list", "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 9 and "no tracking store" in result.output
    assert not (tmp_path / "runs").exists()


def test_ui_serves_the_embedded_store(tracked) -> None:
    from visiondeck.cli.registry_cmd import ui_command

    command = ui_command(tracked.uri, "127.0.0.1", 5123)
    assert command[:4] == [sys.executable, "-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == tracked.uri
    destination = command[command.index("--artifacts-destination") + 1]
    assert destination == (tracked.runs_root / "mlruns" / "artifacts").resolve().as_uri()
    server = _run("ui", "--tracking-uri", "http://127.0.0.1:5999")
    assert server.exit_code == 0 and "open it in your browser" in server.output


def test_train_command_tracks_by_default(tmp_path, monkeypatch) -> None:
    from tests.factories import write_learnable

    monkeypatch.chdir(tmp_path)
    data = write_learnable(tmp_path / "images", per_class=12)
    result = _run("train", f"data.source={data}", "data.image_size=16", "data.augment=none",
                  "data.cache=memory", "data.num_workers=1", "data.val_fraction=0.25",
                  "data.test_fraction=0.25", "train.epochs=1", "train.batch_size=16",
                  "name=cli", f"output_dir={tmp_path / 'runs'}")
    assert result.exit_code == 0, result.output
    link = read_link(tmp_path / "runs" / "cli")
    assert link is not None and link.experiment == "cli"
    listed = _run("runs", "list", "--runs-dir", str(tmp_path / "runs"))
    assert link.run_id[:8] in listed.output
    off = _run("train", f"data.source={data}", "data.image_size=16", "data.augment=none",
               "data.cache=memory", "data.num_workers=1", "data.val_fraction=0.25",
               "data.test_fraction=0.25", "train.epochs=1", "train.batch_size=16",
               "name=quiet", f"output_dir={tmp_path / 'runs'}", "tracking.enabled=false")
    assert off.exit_code == 0, off.output
    assert read_link(tmp_path / "runs" / "quiet") is None
