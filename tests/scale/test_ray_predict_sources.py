"""`visiondeck predict --engine ray` on an S3 prefix and on a manifest, on a real two-node Ray
cluster on loopback and a real S3-compatible store (seaweedfs).

The cluster's nodes hold the store's settings in their environment, as nodes with an
instance role or a credentials file would: the driver ships nothing but the bundle. The
Ray output must equal, cell by cell, what the local engine writes for the same inputs, with
the sha256 of the bytes that were in the store; a rerun scores nothing again.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.deploy.conftest import CLASSES, colour_png, write_colour_bundle

BUCKET = "collection"
IMAGES = 240
SHARD = 25


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.servers import s3_store_in_environment

    with s3_store_in_environment(tmp_path_factory.mktemp("s3"), BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def ray_cluster(store, ray_cluster):
    """The conftest's cluster, started once the store's settings are in the environment."""
    return ray_cluster


@pytest.fixture(scope="module")
def uploaded(store) -> dict[str, bytes]:
    """s3:// URI → bytes: images in two sub-prefixes, a broken PNG and a README."""
    objects = {f"p{i % 2}/img{i:04d}.png": colour_png(CLASSES[i % 3], size=8, seed=i)
               for i in range(IMAGES)}
    objects["p0/broken.png"] = b"\x89PNG\r\n\x1a\nnot really"
    objects["p1/README.txt"] = b"not a picture: skipped while walking\n"
    client = store.client()
    for key, data in objects.items():
        client.put_object(Bucket=BUCKET, Key=f"shots/{key}", Body=data)
    return {f"s3://{BUCKET}/shots/{key}": data for key, data in objects.items()}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


def _local_rows(bundle: Path, *inputs: str) -> list[dict[str, str]]:
    from visiondeck.cli import app

    result = CliRunner().invoke(app, ["predict", str(bundle), *inputs, "--format", "csv",
                                      "--top-k", "3", "--workers", "1"])
    assert result.exit_code in (0, 3), result.output
    return sorted(csv.DictReader(io.StringIO(result.stdout)), key=lambda r: r["source"])


def _ray_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_an_s3_prefix_scored_on_ray_equals_the_local_engine(ray_cluster, bundle: Path,
                                                            uploaded: dict[str, bytes],
                                                            tmp_path: Path) -> None:
    from visiondeck.locations import iter_inputs
    from visiondeck.scale.ray_predict import predict_on_ray

    prefix = f"s3://{BUCKET}/shots/"
    out = tmp_path / "scored"
    result = predict_on_ray(bundle, iter_inputs([prefix]), out, address=ray_cluster.address,
                            top_k=3, shard_size=SHARD, write_csv=True)
    assert (result.scored, result.failed, result.skipped) == (IMAGES, 1, 1)
    rows = _ray_rows(out / "predictions.csv")
    assert len(rows) == IMAGES + 1  # every image once, the README skipped, the broken kept
    for row in rows:  # the hash of the bytes in the store, taken from the one read
        assert row.pop("sha256") == hashlib.sha256(uploaded[row["source"]]).hexdigest()
    assert rows == _local_rows(bundle, prefix)
    assert all(r["label"] == CLASSES[int(r["source"][-8:-4]) % 3] for r in rows
               if not r["error"])

    again = predict_on_ray(bundle, iter_inputs([prefix]), out, address=ray_cluster.address,
                           top_k=3, shard_size=SHARD, write_csv=True)
    assert (again.scored, again.already_done) == (0, IMAGES + 2)


def test_a_manifest_of_s3_and_local_locations_on_ray(ray_cluster, bundle: Path,
                                                     uploaded: dict[str, bytes],
                                                     tmp_path: Path) -> None:
    """The CLI with a manifest: what it lists is scored, named files are always reported
    (the README it names is a failure here, as locally), a missing object is "missing"."""
    local_image = tmp_path / "local.png"
    local_image.write_bytes(colour_png("blue", size=8, seed=7))
    listed = [*sorted(uploaded)[:40], f"s3://{BUCKET}/shots/p1/README.txt",
              f"s3://{BUCKET}/shots/gone.png", "local.png"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path\n" + "\n".join(listed) + "\n")
    from visiondeck.cli import app

    out = tmp_path / "scored"
    ran = CliRunner().invoke(app, [
        "predict", str(bundle), str(manifest), "--engine", "ray", "--address",
        ray_cluster.address, "--output", str(out), "--format", "csv", "--top-k", "3",
        "--shard-size", "10"], env={"COLUMNS": "200"})
    assert ran.exit_code == 3, ran.output  # the broken PNG, the README, the missing object
    rows = _ray_rows(out / "predictions.csv")
    local = _local_rows(bundle, str(manifest))
    for row in rows:
        row.pop("sha256")
    assert rows == local and len(rows) == len(listed)
    problems = {r["source"]: r["error"].split(":")[0] for r in rows if r["error"]}
    assert problems == {f"s3://{BUCKET}/shots/p0/broken.png": "truncated",
                        f"s3://{BUCKET}/shots/p1/README.txt": "not_an_image",
                        f"s3://{BUCKET}/shots/gone.png": "missing"}
    assert [r["label"] for r in rows if r["source"] == str(local_image)] == ["blue"]
