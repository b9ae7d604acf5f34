"""`visiondeck predict --engine ray`: score a large image collection on a Ray cluster.

Ray Data carries the work: the driver lists the inputs (files, folders, globs, manifests,
S3 prefixes: `locations.iter_inputs`, as the local engine does, so both see the same images)
and cuts them into *shards* of `shard_size` paths, one Ray Data block each; an actor pool
of torch-free `Predictor`s (one CPU, one ORT thread each) scores a shard in ORT batches and
writes it as one Parquet part.

Exactly once, under lost workers and reruns:
- a shard's paths are fixed by the driver before any work starts, and the shard is written
  as `parts/part-GGGGG-SSSSSSS.parquet` (G: the run's generation, S: the shard) through a
  private temporary renamed over the name (`_files.atomic_path`): a part is whole or absent;
- Ray Data restarts a killed actor and retries its shard; the retry writes the same name
  with the same content, so a retry after a write that did land changes nothing;
- a rerun reads the sources already in the parts (and the non-images skipped by them, kept
  in each part's metadata), scores only the rest, in a new generation, so parts of different
  runs never name the same file.
The parts folder is a Parquet dataset on its own; at the end the parts are compacted into
`predictions.parquet` (and `predictions.csv` on request), sorted by source, after checking
that no source appears twice. Rows are `scale.rows.prediction_record` plus the file's sha256.

The bundle is shipped to the actors through Ray's object store (unpacked once per node), so
the workers need only the images (a shared file system, or an S3 store that every node can
read with its own credentials) and this package, not the bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondeck.errors import ConfigError

__all__ = ["RAY_HINT", "RayPredictResult", "predict_on_ray", "read_parts", "require_ray"]

RAY_HINT = "pip install 'visiondeck[ray]' (Ray and Ray Data), or use --engine local"
PARTS = "parts"
JOB_FILE = "job.json"
PART_GLOB = "part-*.parquet"
_SKIPPED_KEY = b"visiondeck.skipped"


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a `ConfigError` that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed ({exc})",
                          hint=RAY_HINT) from exc
    return ray


@dataclass
class RayPredictResult:
    """What a Ray run did: files scored now, failures among them, files already done."""

    output: Path
    scored: int = 0
    failed: int = 0
    skipped: int = 0  # non-images met while walking folders (dropped, as locally)
    already_done: int = 0
    shards: int = 0
    parquet: Path | None = None
    csv: Path | None = None
    total_failed: int = 0  # failures in the whole output (this run and earlier ones)
    generation: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def predict_on_ray(bundle: Any, files: Iterable[str | tuple[str, bool]],
                   output: str | os.PathLike[str], *, unmatched: Iterable[str] = (),
                   address: str | None = None, top_k: int = 3, variant: str = "auto",
                   batch_size: int = 64, shard_size: int = 1000, actors: int | None = None,
                   write_csv: bool = False, compact: bool = True) -> RayPredictResult:
    """Score `files` with `bundle` on Ray into the folder `output` (resumable).

    files: locations (paths, `s3://` URIs), or (location, found by walking) pairs as
    `locations.iter_inputs` yields them (a walked non-image is dropped silently, as
    locally); unmatched: inputs that matched no file, written as "no_match" failures (as locally).

    address: a Ray cluster (`ray://…` or `host:port`; None: RAY_ADDRESS, else a Ray started
    in this process). actors: scorers in the pool (None: one per CPU of the cluster).
    """
    import time

    from visiondeck.export.bundle import load_bundle
    from visiondeck.export.predictor import PredictFailure

    if top_k < 1 or batch_size < 1 or shard_size < 1:
        raise ConfigError("--top-k, --batch-size and --shard-size must be at least 1")
    ray = require_ray()
    loaded = load_bundle(bundle)
    variant = loaded.resolve_variant(variant)
    loaded.onnx_path(variant)  # a missing variant fails here, before a cluster is touched
    labels = list(loaded.classes) if loaded.multilabel else None  # prob_/pass_ per label
    out = Path(output)
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    payload, digest = _bundle_payload(loaded.path)
    _check_job(out / JOB_FILE, {"bundle": loaded.name, "bundle_sha256": digest,
                                "variant": variant, "top_k": top_k})
    _remove_stale_temporaries(parts)
    started = time.perf_counter()
    done, generation = _done(parts)
    result = RayPredictResult(out, already_done=len(done), generation=generation)

    missing = [raw for raw in unmatched if raw not in done]
    if missing:
        failures = [PredictFailure(raw, "no_match", f"{raw}: matched no file")
                    for raw in missing]
        _write_part(parts / f"part-{generation:05d}-unmatched.parquet",
                    [_record(f, top_k, labels=labels, hashed=False) for f in failures],
                    top_k, [], labels)
        result.failed += len(failures)
    shards = list(_shards(_pairs(files), done, shard_size, generation))
    result.shards = len(shards)
    result.timings["list_s"] = time.perf_counter() - started
    if shards:
        own = not ray.is_initialized()
        if own:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        try:
            ref = ray.put(payload)
            pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
            dataset = ray.data.from_items(shards, override_num_blocks=len(shards)).map(
                _ShardScorer, fn_constructor_args=(ref, digest, variant, top_k, batch_size,
                                                   str(parts.resolve()), labels),
                compute=ray.data.ActorPoolStrategy(size=min(pool, len(shards))), num_cpus=1)
            for row in dataset.iter_rows():
                result.scored += int(row["scored"])
                result.failed += int(row["failed"])
                result.skipped += int(row["skipped"])
        finally:
            if own:
                ray.shutdown()
    result.timings["score_s"] = time.perf_counter() - started - result.timings["list_s"]
    if compact:
        result.parquet, result.csv, result.total_failed = compact_parts(
            out, top_k, write_csv=write_csv, labels=labels)
    result.timings["total_s"] = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------- the actors

class _ShardScorer:
    """A Ray Data actor: one Predictor (one ORT thread), one shard in, one Parquet part out."""

    def __init__(self, payload: Any, digest: str, variant: str, top_k: int, batch_size: int,
                 parts: str, labels: list[str] | None = None) -> None:
        import ray

        from visiondeck.export.predictor import Predictor

        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        folder = _unpack_bundle(payload, digest)
        self.predictor = Predictor(folder, variant, threads=1, top_k=top_k)
        self.top_k = top_k
        self.labels = labels
        self.batch_size = batch_size
        self.parts = Path(parts)

    def __call__(self, shard: dict[str, Any]) -> dict[str, Any]:
        from visiondeck.locations import open_location

        paths = json.loads(shard["paths"])
        walked = {p for p, w in zip(paths, json.loads(shard["walked"]), strict=True) if w}
        # S3 objects are opened here, in this process, so that the hash of the bytes the
        # decoder read can be taken from them (no second download)
        items = [open_location(p) for p in paths]
        streams = {item.name: item for item in items if not isinstance(item, str)}
        results = self.predictor.predict_files(items, top_k=self.top_k,
                                               batch_size=self.batch_size, workers=0,
                                               skip_non_images=walked)
        records = [_record(r, self.top_k, streams.get(r.source), labels=self.labels)
                   for r in results]
        seen = {r["source"] for r in records}
        skipped = [p for p in paths if p not in seen]
        name = f"part-{int(shard['generation']):05d}-{int(shard['shard']):07d}.parquet"
        _write_part(self.parts / name, records, self.top_k, skipped, self.labels)
        failed = sum(1 for r in records if r["error"] is not None)
        return {"shard": int(shard["shard"]), "scored": len(records) - failed,
                "failed": failed, "skipped": len(skipped)}


def _record(result: Any, top_k: int, stream: Any = None, *,
            labels: list[str] | None = None, hashed: bool = True) -> dict[str, Any]:
    """The output row; sha256 of the file (of an S3 object: of the bytes read, when the
    whole object was read; None when it could not be, as for a missing or oversized one)."""
    from visiondeck._files import file_sha256
    from visiondeck.scale.rows import prediction_record

    digest = None
    if stream is not None:
        digest = stream.sha256
    elif hashed and result.source is not None:
        try:
            digest = file_sha256(result.source)
        except OSError:
            digest = None
    return prediction_record(result, top_k, sha256=digest, with_sha256=True, labels=labels)


# ---------------------------------------------------------------------------- parts on disk

def _schema(top_k: int, labels: list[str] | None = None) -> Any:
    import pyarrow as pa

    from visiondeck.scale.rows import record_columns

    kinds = {"probability": pa.float64(), "unknown": pa.bool_()}
    kinds |= {f"prob_{name}": pa.float64() for name in labels or ()}
    kinds |= {f"pass_{name}": pa.bool_() for name in labels or ()}
    return pa.schema([(name, kinds.get(name, pa.float64() if name.endswith("_probability")
                                       else pa.string()))
                      for name in record_columns(top_k, sha256=True, labels=labels)])


def _write_part(path: Path, records: list[dict[str, Any]], top_k: int,
                skipped: list[str], labels: list[str] | None = None) -> None:
    """One part, whole or not at all (a killed writer leaves only a hidden temporary)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from visiondeck._files import atomic_path

    schema = _schema(top_k, labels).with_metadata({_SKIPPED_KEY: json.dumps(skipped).encode()})
    table = pa.Table.from_pylist(records, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _part_files(parts: Path) -> list[Path]:
    return sorted(parts.glob(PART_GLOB))


def read_parts(output: str | os.PathLike[str]) -> Any:
    """Every row of the parts under `output` as one Arrow table (unsorted, as written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = _part_files(Path(output) / PARTS)
    if not files:
        raise ConfigError(f"{output} holds no prediction parts")
    return pa.concat_tables([pq.read_table(f) for f in files])


def _done(parts: Path) -> tuple[set[str], int]:
    """Sources already written (and skipped non-images), and the next generation."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    generation = 0
    for part in _part_files(parts):
        generation = max(generation, int(part.name.split("-")[1]) + 1)
        done.update(s for s in pq.read_table(part, columns=["source"])["source"].to_pylist()
                    if s is not None)
        meta = pq.read_schema(part).metadata or {}
        done.update(json.loads(meta.get(_SKIPPED_KEY, b"[]")))
    return done, generation


def _remove_stale_temporaries(parts: Path) -> None:
    """Temporaries of writers killed mid-write (never renamed, so never read)."""
    for stale in parts.glob(".part-*.tmp"):
        stale.unlink(missing_ok=True)


def compact_parts(output: str | os.PathLike[str], top_k: int, *, write_csv: bool = False,
                  labels: list[str] | None = None) -> tuple[Path, Path | None, int]:
    """predictions.parquet (and .csv), sorted by source; refuses a source seen twice."""
    import csv as csv_module

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from visiondeck._files import atomic_path, atomic_writer
    from visiondeck.scale.rows import csv_cells, csv_header

    out = Path(output)
    table = read_parts(out)
    if pc.count_distinct(table["source"]).as_py() != table.num_rows:
        raise ConfigError(f"{out} holds a source more than once",
                          hint="a part was copied in by hand? remove the extra part")
    table = table.sort_by([("source", "ascending")]).replace_schema_metadata(None)
    parquet = out / "predictions.parquet"
    with atomic_path(parquet) as tmp:
        pq.write_table(table, tmp)
    failed = table.num_rows - pc.sum(pc.is_null(table["error"])).as_py()
    csv_path = None
    if write_csv:
        csv_path = out / "predictions.csv"
        with atomic_writer(csv_path, newline="") as handle:
            writer = csv_module.writer(handle)
            writer.writerow(csv_header(top_k, sha256=True, labels=labels))
            for batch in table.to_batches(max_chunksize=10_000):
                writer.writerows(csv_cells(row) for row in batch.to_pylist())
    return parquet, csv_path, int(failed)


# ---------------------------------------------------------------------------- the driver's side

def _shards(files: Iterable[tuple[str, bool]], done: set[str], size: int, generation: int
            ) -> Iterator[dict[str, Any]]:
    """Shard descriptors (paths as JSON, so any file name travels intact) of what is not done."""
    paths: list[str] = []
    walked: list[bool] = []
    index = 0
    for path, from_walk in files:
        if path in done:
            continue
        paths.append(path)
        walked.append(from_walk)
        if len(paths) == size:
            yield _shard(generation, index, paths, walked)
            index += 1
            paths, walked = [], []
    if paths:
        yield _shard(generation, index, paths, walked)


def _pairs(files: Iterable[str | tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
    for item in files:
        yield (os.fspath(item), False) if isinstance(item, str | os.PathLike) else item


def _shard(generation: int, index: int, paths: list[str], walked: list[bool]) -> dict[str, Any]:
    return {"generation": generation, "shard": index, "paths": json.dumps(paths),
            "walked": json.dumps(walked)}


def _check_job(path: Path, job: dict[str, Any]) -> None:
    """The output folder belongs to one bundle and one set of options: a rerun must match."""
    from visiondeck._files import atomic_write_json

    if path.exists():
        previous = json.loads(path.read_text())
        if previous != job:
            changed = sorted(k for k in job if previous.get(k) != job[k])
            raise ConfigError(f"{path.parent} holds results of another run ({', '.join(changed)} "
                              "differ)", hint="give a new --output folder, or the same options")
        return
    atomic_write_json(path, job)


def _bundle_payload(folder: Path) -> tuple[dict[str, bytes], str]:
    """The bundle's files (relative name → bytes) and their joint sha256."""
    payload: dict[str, bytes] = {}
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in name.split("/")):
            continue
        payload[name] = file.read_bytes()
        digest.update(name.encode() + b"\0" + hashlib.sha256(payload[name]).digest())
    return payload, digest.hexdigest()


def _unpack_bundle(payload: dict[str, bytes], digest: str) -> Path:
    """The shipped bundle as a folder on this node, unpacked once (renamed into place whole)."""
    home = Path(tempfile.gettempdir()) / "visiondeck-bundles"
    target = home / digest
    if target.exists():
        return target
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=home))
    for name, data in payload.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    try:
        os.rename(staging, target)
    except OSError:  # another actor on this node got there first
        for path in sorted(staging.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        staging.rmdir()
    return target
