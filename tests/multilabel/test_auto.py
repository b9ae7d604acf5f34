"""The data-driven recipe on a multi-label manifest: the profile counts each label's
positives and the labels per image (not label sets as classes), the rules choose BCE, no
smoothing and a per-label pos_weight only for rare labels, the table of choices says so,
and `visiondeck train manifest.csv --time` runs with no recipe."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.multilabel.synth import LABELS, write_set
from visiondeck.cli import app
from visiondeck.data.profile import DataProfile, profile_images
from visiondeck.train.auto import IMBALANCE_LIMIT, choose

pytestmark = pytest.mark.timeout(600)


def _profile(counts: dict[str, int], images: int = 1000) -> DataProfile:
    return DataProfile(
        images=images, classes=sorted(counts), class_counts=counts, median_width=56,
        median_height=56, median_side=56, min_side_p5=56, aspect_median=1.0, aspect_p10=1.0,
        aspect_p90=1.0, sampled=512, grey_share=1.0, mean=(0.3,), std=(0.35,),
        flip_consistency=0.9, task="multilabel", labels_per_image=1.8,
        max_labels_per_image=4, unlabelled=12)


def test_the_profile_counts_positives_per_label(tmp_path: Path) -> None:
    items = []
    for i, labels in enumerate(["a|b", "a", "", "a|b|c", "b"]):
        Image.fromarray(np.full((8, 10), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        items.append((f"{i}.png", labels))
    profile = profile_images(tmp_path, items, multilabel=True, classes=["a", "b", "c", "d"])
    assert profile.multilabel and profile.classes == ["a", "b", "c", "d"]
    assert profile.class_counts == {"a": 3, "b": 3, "c": 1, "d": 0}
    assert profile.labels_per_image == pytest.approx(7 / 5)
    assert (profile.max_labels_per_image, profile.unlabelled) == (3, 1)
    assert profile.rarest_label == "d" and profile.max_pos_weight == float("inf")
    shown = profile.to_json()
    assert shown["task"] == "multilabel" and shown["rarest_label"] == "d"
    # single-label profiles are unchanged: "a|b" would be a class of its own there
    single = profile_images(tmp_path, items[:2])
    assert not single.multilabel and single.class_counts == {"a": 1, "a|b": 1}


def test_the_rules_choose_bce_and_weigh_only_rare_labels() -> None:
    common = choose(_profile({"x": 400, "y": 300, "z": 260}), transfer_weights=False)
    values = {k: v for k, (v, _) in common.items()}
    assert values["data.task"] == "multilabel" and values["train.loss"] == "ce"
    assert values["train.label_smoothing"] == 0.0 and values["train.balance"] == "none"
    facts = common["data.task"][1]
    assert "3 labels" in facts and "1.80 per image" in facts and "'z' on 260 of 1000" in facts
    assert "2.8" in common["train.balance"][1]  # (1000 - 260) / 260
    # a label on 1 image in 5 has negatives/positives = 4 > 3: a pos_weight per label
    rare = choose(_profile({"x": 400, "y": 300, "z": 200}), transfer_weights=False)
    assert rare["train.balance"][0] == "weights" and "4.0" in rare["train.balance"][1]
    assert (1000 - 200) / 200 > IMBALANCE_LIMIT >= (1000 - 260) / 260
    # single-label profiles keep their own rules
    single = choose(replace(_profile({"x": 10, "y": 10}), task="single"),
                    transfer_weights=False)
    assert "data.task" not in single and "train.loss" not in single
    assert single["train.label_smoothing"][0] == 0.1


def test_train_a_manifest_within_a_time_budget_without_a_recipe(tmp_path: Path) -> None:
    manifest = write_set(tmp_path / "data", 90, form="labels")
    result = CliRunner().invoke(app, [
        "train", str(manifest), "--time", "20s", f"output_dir={tmp_path}/runs",
        f"data.prepared={tmp_path}/prep", "tracking.enabled=false", "data.num_workers=1"])
    assert result.exit_code == 0, result.output
    assert "data.task" in result.output and "multilabel" in result.output
    run = tmp_path / "runs" / "manifest"
    auto = json.loads((run / "auto.json").read_text())
    profile = auto["profile"]
    assert profile["task"] == "multilabel" and profile["classes"] == list(LABELS)
    assert sum(profile["class_counts"].values()) == round(
        profile["labels_per_image"] * profile["images"])
    choices = {c["key"]: c for c in auto["choices"]}
    assert choices["data.task"]["value"] == "multilabel"
    assert choices["train.loss"]["value"] == "ce"
    assert auto["budget"]["plan"]["epochs"] >= 1
    info = json.loads((run / "run.json").read_text())
    assert "best_val_map" in info["metrics"] and "val_acc" not in info["metrics"]
    assert (run / "model").is_dir()
