"""`bench_bundle` and `visiondeck bench`: one row per engine, saved as bench.json."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from visiondeck.cli import app
from visiondeck.export.bench import bench_bundle, save_bench


def test_bench_measures_every_engine(exported, tmp_path: Path) -> None:
    report = bench_bundle(exported.path, batch_sizes=(1, 4), seconds=0.02, threads=1)
    assert [row.engine for row in report.rows] == ["pytorch", "onnxruntime-fp32",
                                                   "onnxruntime-int8"]
    variants = exported.bundle.variants
    for row in report.rows:
        assert 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
        assert set(row.per_batch) == {1, 4} and row.best_batch in (1, 4)
        assert row.images_per_s == max(row.per_batch.values()) > 0
    fp32, int8 = report.rows[1], report.rows[2]
    assert fp32.bytes == variants["fp32"]["bytes"] and int8.bytes == variants["int8"]["bytes"]
    assert fp32.accuracy == variants["fp32"]["accuracy"]
    assert report.rows[0].accuracy == exported.parity["pytorch_accuracy"]
    saved = save_bench(report, tmp_path / "bench.json")
    data = json.loads(saved.read_text())
    assert data["rows"][1]["per_batch"].keys() == {"1", "4"} and data["threads"] == 1


def test_bench_command_prints_one_table_and_saves_it(bundle_copy) -> None:
    folder = bundle_copy()
    result = CliRunner().invoke(app, ["bench", str(folder), "--seconds", "0.02",
                                      "--batch-sizes", "1,2", "--no-torch"])
    assert result.exit_code == 0, result.output
    for text in ("ORT FP32", "ORT INT8", "p99 ms", "images/s"):
        assert text in result.output
    assert "PyTorch" not in result.output
    data = json.loads((folder / "bench.json").read_text())
    assert [row["engine"] for row in data["rows"]] == ["onnxruntime-fp32", "onnxruntime-int8"]


def test_bench_command_rejects_bad_batch_sizes(exported) -> None:
    result = CliRunner().invoke(app, ["bench", str(exported.path), "--batch-sizes", "1,x"])
    assert result.exit_code == 2 and "--batch-sizes" in result.output
