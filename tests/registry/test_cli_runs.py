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


def _row(output: str, key: str) -> list[str]:
    """The cells of the table row whose first cell is `key`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == key:
            return cells[1:]
    raise AssertionError(f"no row {key!r} in:\n{output}")


def test_runs_list_shows_every_run_with_verdict_and_metrics(tracked) -> None:
    result = _run("runs", "list", "--runs-dir", str(tracked.runs_root))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    alpha = next(line for line in lines if " alpha " in line)
    beta = next(line for line in lines if " beta " in line)
    assert "passed" in alpha and "completed" in beta
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
    assert _row(out, "train.lr") == ["0.01", "0.003"]
    assert _row(out, "name") == ["alpha", "beta"]
    assert "train.min_val_accuracy" in out  # alpha had a gate, beta none
    assert "train.epochs" not in out  # identical keys are counted, not listed
    assert "keys identical" in out
    assert all(float(v) >= 0 for v in _row(out, "val_acc"))  # one value per run
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


def test_train_command_tracks_by_default(tracked, tmp_path, monkeypatch) -> None:
    from tests.factories import write_learnable

    from visiondeck.config import load_recipe
    from visiondeck.registry.tracking import tracker_for

    monkeypatch.chdir(tmp_path)
    data = write_learnable(tmp_path / "images", per_class=12)
    args = [f"data.source={data}", "data.image_size=16", "data.augment=none",
            "data.cache=memory", "data.num_workers=1", "data.val_fraction=0.25",
            "data.test_fraction=0.25", "train.epochs=1", "train.batch_size=16",
            f"output_dir={tracked.runs_root}"]
    result = _run("train", *args, "name=cli")
    assert result.exit_code == 0, result.output
    link = read_link(tracked.runs_root / "cli")
    assert link is not None and link.experiment == "cli"
    assert link.tracking_uri == tracked.uri
    listed = _run("runs", "list", "--runs-dir", str(tracked.runs_root), "--experiment", "cli")
    assert link.run_id[:8] in listed.output
    assert tracker_for(load_recipe(None, [*args, "tracking.enabled=false"])) is None
