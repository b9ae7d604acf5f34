"""`visiondeck predict --engine ray` on a real two-node Ray cluster on loopback.

The bundle is the deploy tests' colour model (a real ONNX graph whose answers are known):
2,000 tiny PNGs, a broken PNG and a README are scored through the CLI in a subprocess while
the test kills one of the scoring actors' worker processes; the output must then hold every
file exactly once and equal, cell by cell, what the local engine writes for the same folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.deploy.conftest import CLASSES, colour_png, write_colour_bundle

IMAGES = 2000
SHARD = 20


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_bundle(tmp_path_factory.mktemp("ray-bundle") / "bundle")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-images")
    for i in range(IMAGES):
        folder = root / f"d{i // 500}"
        folder.mkdir(exist_ok=True)
        (folder / f"img{i:05d}.png").write_bytes(colour_png(CLASSES[i % 3], size=8, seed=i))
    (root / "d0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "d1" / "README.txt").write_text("not a picture: skipped while walking\n")
    return root


def _local_csv(bundle: Path, images: Path) -> list[dict[str, str]]:
    from visiondeck.cli import app

    result = CliRunner().invoke(app, ["predict", str(bundle), str(images), "--format", "csv",
                                      "--top-k", "3", "--workers", "1"])
    assert result.exit_code == 3, result.output  # the broken PNG
    return sorted(csv.DictReader(io.StringIO(result.stdout)), key=lambda r: r["source"])


def _ray_command(bundle: Path, images: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "visiondeck", "predict", str(bundle), str(images),
            "--engine", "ray", "--address", address, "--output", str(out), "--format", "csv",
            "--top-k", "3", "--shard-size", str(SHARD)]


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_ray_predict_survives_a_killed_worker_and_resumes(ray_cluster, bundle: Path,
                                                          images: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from visiondeck.scale.ray_predict import read_parts

    out = tmp_path / "scored"
    env = {**os.environ, **ray_cluster.env}
    driver = subprocess.Popen(_ray_command(bundle, images, out, ray_cluster.address), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = -(-(IMAGES + 2) // SHARD)  # broken.png and the README are listed too
    killed: list[int] = []
    parts_at_kill = None
    while driver.poll() is None and not killed:
        parts = list((out / "parts").glob("part-*.parquet")) if out.exists() else []
        if parts:  # scoring is under way: take one scoring actor's process down
            scorers = ray_cluster.processes("MapWorker")
            if scorers:
                parts_at_kill = len(parts)
                os.kill(scorers[0], signal.SIGKILL)
                killed.append(scorers[0])
        time.sleep(0.01)
    _, stderr = driver.communicate(timeout=300)
    assert killed, f"no scoring actor was found to kill\n{stderr[-3000:]}"
    assert parts_at_kill is not None and parts_at_kill < shards  # killed mid-way
    assert driver.returncode == 3, stderr[-3000:]  # the broken PNG, as locally
    assert f"{IMAGES} predicted, 1 failed, 0 already done" in stderr

    # every file once, in the parts and in the compacted outputs
    table = read_parts(out)
    sources = table["source"].to_pylist()
    assert len(sources) == len(set(sources)) == IMAGES + 1
    assert len(list((out / "parts").glob("part-*.parquet"))) == shards
    assert not list((out / "parts").glob(".*"))  # no temporary left behind
    ray_rows = _rows(out / "predictions.csv")
    assert pq.read_table(out / "predictions.parquet").num_rows == IMAGES + 1

    # the same answers, cell by cell, as the local engine; the hash is the file's sha256
    # (a broken file has one too: its bytes are what they are)
    local = _local_csv(bundle, images)
    for row in ray_rows:
        assert row.pop("sha256") == _sha256(row["source"])
    assert ray_rows == local
    good = [r for r in local if not r["error"]]
    assert len(good) == IMAGES
    assert all(r["label"] == CLASSES[int(Path(r["source"]).stem[3:]) % 3] for r in good)

    # resume: lost parts are scored again, and only they
    lost = sorted((out / "parts").glob("part-*.parquet"))[3:6]
    lost_sources = sum(pq.read_metadata(p).num_rows for p in lost)
    for part in lost:
        part.unlink()
    again = subprocess.run(_ray_command(bundle, images, out, ray_cluster.address), env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 3, again.stderr[-3000:]
    done = IMAGES + 1 - lost_sources + 1  # + the README, remembered as skipped
    assert f"{lost_sources} predicted, 0 failed, {done} already done" in again.stderr
    assert _rows(out / "predictions.csv") == [{"sha256": _sha256(r["source"]), **r}
                                              for r in local]
