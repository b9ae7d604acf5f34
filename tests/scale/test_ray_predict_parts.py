"""The pieces of `predict --engine ray` that need no cluster: the row layout shared with the
local engine, shards, parts and their compaction, the checks made before Ray is touched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.deploy.conftest import write_colour_bundle
from visiondeck.errors import ConfigError
from visiondeck.export.predictor import PredictFailure, Prediction
from visiondeck.scale import ray_predict
from visiondeck.scale.rows import csv_cells, csv_header, prediction_record

GOOD = Prediction("cat", 1, 0.8, [("cat", 0.8), ("dog", 0.2)], unknown=True, source="a.png")
BAD = PredictFailure("b.png", "truncated", "b.png: file ends early")


def test_rows_are_the_local_csv_layout() -> None:
    assert csv_header(3) == ["source", "label", "probability", "unknown", "error", "top1_label",
                             "top1_probability", "top2_label", "top2_probability",
                             "top3_label", "top3_probability"]
    assert csv_cells(prediction_record(GOOD, 3)) == [
        "a.png", "cat", "0.800000", "true", "", "cat", "0.800000", "dog", "0.200000", "", ""]
    assert csv_cells(prediction_record(BAD, 1)) == [
        "b.png", "", "", "", "truncated: b.png: file ends early", "", ""]
    record = prediction_record(GOOD, 1, sha256="ab", with_sha256=True)
    assert list(record)[:2] == ["source", "sha256"] and record["sha256"] == "ab"


def test_shards_skip_what_is_done_and_keep_walk_flags() -> None:
    files = [("a", True), ("b", False), ("c", True), ("d", False), ("e", False)]
    shards = list(ray_predict._shards(files, {"b"}, 2, 7))
    assert [json.loads(s["paths"]) for s in shards] == [["a", "c"], ["d", "e"]]
    assert [json.loads(s["walked"]) for s in shards] == [[True, True], [False, False]]
    assert [(s["generation"], s["shard"]) for s in shards] == [(7, 0), (7, 1)]


def test_parts_remember_sources_and_skips_and_compaction_refuses_duplicates(
        tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    ray_predict._write_part(parts / "part-00000-0000000.parquet",
                            [prediction_record(GOOD, 2, sha256="x", with_sha256=True)], 2,
                            ["notes.txt"])
    ray_predict._write_part(parts / "part-00002-0000000.parquet",
                            [prediction_record(BAD, 2, with_sha256=True)], 2, [])
    (parts / ".part-00003-0000000.parquet.1.2.tmp").write_bytes(b"half a file")
    assert ray_predict._done(parts) == ({"a.png", "b.png", "notes.txt"}, 3)
    ray_predict._remove_stale_temporaries(parts)
    assert sorted(p.name for p in parts.iterdir()) == ["part-00000-0000000.parquet",
                                                        "part-00002-0000000.parquet"]
    parquet, csv_path, failed = ray_predict.compact_parts(tmp_path, 2, write_csv=True)
    assert parquet == tmp_path / "predictions.parquet" and parquet.exists()
    assert failed == 1
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("source,sha256,label") and lines[1].startswith("a.png,x,cat,")
    ray_predict._write_part(parts / "part-00003-0000000.parquet",
                            [prediction_record(GOOD, 2, with_sha256=True)], 2, [])
    with pytest.raises(ConfigError, match="more than once"):
        ray_predict.compact_parts(tmp_path, 2)


def test_an_output_folder_refuses_another_bundle_or_options(tmp_path: Path) -> None:
    bundle = write_colour_bundle(tmp_path / "bundle")
    out = tmp_path / "out"
    out.mkdir()
    payload, digest = ray_predict._bundle_payload(bundle)
    assert set(payload) == {"bundle.json", "model.onnx", "weights.safetensors"}
    (out / "job.json").write_text(json.dumps({"bundle": "colours", "bundle_sha256": digest,
                                              "variant": "fp32", "top_k": 5}))
    with pytest.raises(ConfigError, match="top_k"):  # before any cluster is touched
        ray_predict.predict_on_ray(bundle, [], out, top_k=3, address="127.0.0.1:1")


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path: Path) -> None:
    from visiondeck.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError) as caught:
        ray_predict.require_ray()
    assert "pip install 'visiondeck[ray]'" in str(caught.value)
    result = CliRunner().invoke(app, ["predict", str(write_colour_bundle(tmp_path / "b")),
                                      str(tmp_path), "--engine", "ray", "-o", str(tmp_path / "o")])
    assert result.exit_code == ConfigError.exit_code
    assert "visiondeck[ray]" in result.output
