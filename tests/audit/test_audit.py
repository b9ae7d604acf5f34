"""The audit finds labels flipped on purpose, lists them editable, and resumes by fold."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.audit.conftest import CHECKER, FLIPPED, FOLDS


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_flipped_labels_are_found_with_the_right_suggestion(audited) -> None:
    result = audited.result
    oof, findings = result.oof, result.findings
    issues = {oof.relpaths[i] for i in findings.label_issues}
    # every flipped image is flagged; apart from the checkerboard (no class fits it), nothing
    # else is: the colours are separable, so the other labels are all right
    assert issues - {CHECKER} == set(FLIPPED)
    by_path = {s.path: s for s in findings.suspects}
    for relpath, truth in FLIPPED.items():
        assert by_path[relpath].suggested == truth
        assert "label" in by_path[relpath].reasons
        # score is 1 - the out-of-fold probability of the given label
        i = oof.relpaths.index(relpath)
        assert by_path[relpath].score == pytest.approx(1 - oof.probs[i, oof.labels[i]], abs=1e-5)
    # out-of-fold: each image was scored by the model of the fold that held it out
    assert sorted(set(oof.fold_of.tolist())) == list(range(FOLDS))
    assert np.allclose(oof.probs.sum(axis=1), 1.0, atol=1e-5)


def test_the_checkerboard_is_an_outlier_and_twins_with_another_label_are_paired(audited) -> None:
    oof, findings = audited.result.oof, audited.result.findings
    outliers = {oof.relpaths[i] for i in findings.outliers}
    assert CHECKER in outliers
    assert not outliers & {
        p for p in oof.relpaths if p.split("/")[1].startswith(p.split("/")[0])
    }  # no ordinary, correctly labelled colour is an outlier
    by_path = {s.path: s for s in findings.suspects}
    # a flipped red labelled green sits among the reds: its nearest other-label twin is red
    twin = by_path["green/red_flipped.png"]
    assert "near_duplicate" in twin.reasons
    assert twin.duplicate_label == "red" and twin.similarity >= 0.95
    # of each such pair only the doubted member is listed: no correctly labelled red is
    reds = [s for s in findings.suspects if s.path.startswith("red/red_")]
    assert reds == []


def test_suspects_csv_is_ranked_and_the_report_shows_thumbnails(audited) -> None:
    result = audited.result
    rows = _rows(result.csv)
    assert list(rows[0])[:4] == ["path", "given", "suggested", "score"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["path"] for r in rows} == {s.path for s in result.findings.suspects}
    assert {r["path"] for r in rows} >= set(FLIPPED) | {CHECKER}
    page = result.html.read_text()
    assert page.count('<img class="thumb"') >= len(rows)
    assert "red_flipped.png" in page and "data:image/png;base64," in page
    summary = json.loads(result.summary.read_text())
    assert summary["trained_folds"] == [0, 1] and summary["reused_folds"] == []
    assert set(summary["label_issues"]) - {CHECKER} == set(FLIPPED)
    # cleanlab's less certain candidates go to possible.csv (same columns), never to suspects
    assert result.possible_csv == result.out_dir / "possible.csv"
    possible = _rows(result.possible_csv)
    assert {r["path"] for r in possible} == {s.path for s in result.findings.possible}
    assert not {r["path"] for r in possible} & {r["path"] for r in rows}
    assert summary["counts"]["cleanlab_candidates"] == len(summary["label_issues"]) + len(
        summary["possible_label_issues"]
    )


def test_a_rerun_reuses_finished_folds_and_trains_only_the_missing_one(
    audited, tmp_path, monkeypatch
) -> None:
    import visiondeck.evaluate.cv as cv
    from visiondeck.audit import audit

    out = tmp_path / "out"
    shutil.copytree(audited.out, out)
    fold0 = out / "oof" / "fold-0.npz"
    before = fold0.read_bytes()
    (out / "oof" / "fold-1.npz").unlink()  # as if the audit was killed during fold 1
    trained: list[int] = []
    real = cv.train_fold

    def spy(recipe, fold, run_dir, **kwargs):
        trained.append(fold)
        return real(recipe, fold, run_dir, **kwargs)

    monkeypatch.setattr(cv, "train_fold", spy)
    result = audit(audited.recipe, out, folds=FOLDS)
    assert trained == [1]
    assert result.oof.reused == [0] and result.oof.trained == [1]
    assert fold0.read_bytes() == before
    assert (out / "oof" / "fold-1.npz").exists()
    again = audit(audited.recipe, out, folds=FOLDS)
    assert trained == [1]  # nothing trained the third time
    assert again.oof.reused == [0, 1]
    np.testing.assert_array_equal(again.oof.probs, result.oof.probs)


def test_a_fold_saved_for_another_recipe_is_not_reused(audited) -> None:
    from visiondeck.audit.oof import _load_fold, audit_recipe, recipe_digest

    used = audit_recipe(audited.recipe, FOLDS, audited.out)
    changed = used.model_copy(update={"model": used.model.model_copy(update={"dropout": 0.3})})
    assert recipe_digest(changed) != recipe_digest(used)
    oof = audited.result.oof
    same = {"split_id": oof.split_id, "recipe": recipe_digest(used), "folds": FOLDS}
    fold0 = audited.out / "oof" / "fold-0.npz"
    assert _load_fold(fold0, same, oof.relpaths) is not None
    assert _load_fold(fold0, dict(same, recipe=recipe_digest(changed)), oof.relpaths) is None
    assert _load_fold(fold0, dict(same, split_id="another"), oof.relpaths) is None


def test_plan_epochs_shares_the_budget_over_the_folds_left() -> None:
    from visiondeck.audit.oof import plan_epochs

    plan = plan_epochs(120.0, 4, 5.0, 20)  # 30 s a fold, 5 s an epoch
    assert plan.epochs == 6 and plan.max_minutes == pytest.approx(1.0)
    assert plan_epochs(120.0, 4, 5.0, 3).epochs == 3  # never past the recipe's epochs
    assert plan_epochs(1.0, 4, 5.0, 20).epochs == 1  # at least one epoch
    assert (
        plan_epochs(None, 4, 5.0, 7).epochs == 7
        and plan_epochs(None, 4, 5.0, 7).max_minutes is None
    )


def test_nearest_neighbours_match_a_brute_force_search() -> None:
    from visiondeck.audit.findings import nearest_neighbours

    x = np.random.default_rng(3).normal(size=(57, 9)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx, sim = nearest_neighbours(x, 4, chunk=10)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(sim, np.take_along_axis(full, expected, axis=1), rtol=1e-5)


def test_the_cli_reuses_the_audit_and_prints_the_suspects(audited, tmp_path) -> None:
    from typer.testing import CliRunner

    from visiondeck.cli import app

    out = tmp_path / "out"
    shutil.copytree(audited.out, out)
    (out / "suspects.csv").unlink()
    overrides = [
        f"{k}={v}"
        for k, v in {
            "name": "colours",
            "data.image_size": 16,
            "data.channels": 3,
            "data.augment": "none",
            "data.mean": "[0.5]",
            "data.std": "[0.5]",
            "data.num_workers": 0,
            "model.name": "simple_cnn",
            "model.dropout": 0.0,
            "train.epochs": 6,
            "train.batch_size": 8,
            "train.lr": 0.01,
            "train.scheduler": "none",
            "train.accelerator": "cpu",
            "train.seed": 0,
            "data.source": str(audited.data),
        }.items()
    ]
    done = CliRunner().invoke(
        app,
        ["data", "audit", overrides[0], *overrides[1:], "--folds", str(FOLDS), "--out", str(out)],
    )
    assert done.exit_code == 0, done.output
    assert "fold 1/2 reused" in done.output and "fold 2/2 reused" in done.output
    assert "red_flipped.png" in done.output
    assert _rows(out / "suspects.csv") == _rows(audited.result.csv)
