"""What `predict` reads: the images its inputs name, wherever they are.

An input is an image file, a folder (walked recursively), a glob, a manifest (a CSV or
Parquet file with a `path` column, read by `data.sources.manifest_paths`), or an object
store location `s3://BUCKET/KEY` (one object) or `s3://BUCKET/PREFIX/` (every object
under it, as a folder is walked). Both engines of `visiondeck predict` (local and Ray)
list their work here, so they see the same images in the same order.

S3 objects are read through boto3 with its standard settings (credentials from the
environment or the instance role; `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` for an
S3-compatible store such as MinIO or SeaweedFS). Reading is bounded like a local file:
`S3Object.read(n)` asks the store for at most `n` bytes (an HTTP Range), so the decoder's
byte limit holds before anything is transferred beyond it, and a missing object or a
refused read is an `OSError` that the predictor reports for that image alone.
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from visiondeck.data.sources import MANIFEST_SUFFIXES, manifest_paths
from visiondeck.errors import ConfigError

__all__ = [
    "S3_HINT",
    "S3Object",
    "is_s3",
    "iter_inputs",
    "open_location",
    "split_s3",
    "unmatched_inputs",
]

S3_SCHEME = "s3://"
S3_HINT = ("pip install 'visiondeck[s3]' (boto3), and give the store's credentials the "
           "usual AWS way (AWS_ACCESS_KEY_ID…, AWS_ENDPOINT_URL_S3 for a non-AWS store)")


def is_s3(value: object) -> bool:
    return isinstance(value, str) and value.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key); a URI without a bucket is a `ConfigError`."""
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise ConfigError(f"{uri}: no bucket in this S3 location",
                          hint="write it as s3://BUCKET/PREFIX/ or s3://BUCKET/KEY")
    return bucket, key


_LOCAL = threading.local()


_SETTINGS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION",
             "AWS_REGION")


def _client() -> Any:
    """A boto3 S3 client for this thread and these settings (a client is made once per
    thread, and again when the store's settings in the environment change)."""
    key = tuple(os.environ.get(name) for name in _SETTINGS)
    cached = getattr(_LOCAL, "client", None)
    if cached is None or cached[0] != key:
        try:
            import boto3
        except ImportError as exc:
            raise ConfigError(f"reading s3:// locations needs boto3 ({exc})",
                              hint=S3_HINT) from exc
        # a session of its own: boto3's default session keeps the credentials it resolved
        # first, so a changed environment would go unseen
        cached = _LOCAL.client = (key, boto3.session.Session().client("s3"))
    return cached[1]


def _os_error(exc: Exception, uri: str) -> OSError:
    """A boto3 failure as the OSError a local read would raise (missing, refused, other)."""
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
        return FileNotFoundError(2, "no such object", uri)
    if code in ("AccessDenied", "403", "Forbidden"):
        return PermissionError(13, "access denied", uri)
    return OSError(5, f"{type(exc).__name__}: {exc}", uri)


class S3Object:
    """One object of an S3 store as a read-once stream, named by its URI.

    `read(n)` fetches at most `n` bytes (a Range request), so a byte cap is enforced by the
    store, not after a download; `sha256` is the hash of the whole object once it has been
    read whole (None before, or when the read stopped at a cap below the object's size).
    Picklable: it holds its URI only, and the client is made in the process that reads.
    """

    def __init__(self, uri: str) -> None:
        self.name = uri
        self.bucket, self.key = split_s3(uri)
        if not self.key or self.key.endswith("/"):
            raise ConfigError(f"{uri} names a prefix, not an object")
        self.sha256: str | None = None

    def read(self, size: int = -1) -> bytes:
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if size is not None and size >= 0:
            if size == 0:
                return b""
            request["Range"] = f"bytes=0-{size - 1}"
        try:
            answer = _client().get_object(**request)
            body = answer["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        except ConfigError:
            raise
        except Exception as exc:  # botocore's errors: reported like a local read's
            if "InvalidRange" in str(exc):  # a Range on an empty object
                data, answer = b"", {}
            else:
                raise _os_error(exc, self.name) from exc
        total = _total_size(answer, len(data))
        self.sha256 = hashlib.sha256(data).hexdigest() if total == len(data) else None
        return data

    def __repr__(self) -> str:
        return f"S3Object({self.name!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (S3Object, (self.name,))


def _total_size(answer: dict[str, Any], got: int) -> int:
    """The object's full size, from a ranged answer's Content-Range (`bytes 0-9/1234`)."""
    ranged = answer.get("ContentRange")
    if ranged and "/" in ranged:
        total = ranged.rsplit("/", 1)[1]
        if total.isdigit():
            return int(total)
    return got


def open_location(item: Any) -> Any:
    """An `s3://` string as an `S3Object`; anything else (a local path, bytes…) unchanged."""
    return S3Object(item) if is_s3(item) else item


# ---------------------------------------------------------------------------- listing inputs

def iter_inputs(inputs: list[str]) -> Iterator[tuple[str, bool]]:
    """(location, found by walking) for every image the inputs name, lazily and in order.

    Folders and S3 prefixes are walked (hidden entries skipped, sorted); what they hold
    that is not an image at all (a README beside the pictures) is skipped by the
    predictor, not reported, while a file named explicitly (or listed in a manifest) is
    always reported. Globs (`*`, `?`, `[`, `**`) are expanded when no file has that
    literal name. With several inputs, duplicates are dropped (the locations seen are
    remembered, ~100 bytes each); a single input needs no memory per image.
    """
    seen: set[str] | None = set() if len(inputs) > 1 else None

    def fresh(location: str) -> bool:
        if seen is None:
            return True
        if location in seen:
            return False
        seen.add(location)
        return True

    for raw in inputs:
        for item in _expand_input(raw):
            if fresh(item[0]):
                yield item


def _expand_input(raw: str) -> Iterator[tuple[str, bool]]:
    if is_s3(raw):
        yield from _list_s3(raw)
        return
    path = Path(raw).expanduser()
    if path.is_dir():
        yield from ((f, True) for f in _walk(path))
    elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        yield from ((p, False) for p in manifest_paths(path))
    elif path.exists() or not glob.has_magic(raw):
        yield str(path), False  # a missing plain path is reported later
    else:
        yield from _expand(raw)


def unmatched_inputs(inputs: list[str]) -> list[str]:
    """The globs and S3 prefixes among `inputs` that name nothing (each checked up to its
    first match)."""
    missing = []
    for raw in inputs:
        if is_s3(raw):
            if next(_list_s3(raw), None) is None:
                missing.append(raw)
        elif (not Path(raw).expanduser().exists() and glob.has_magic(raw)
                and next(glob.iglob(os.path.expanduser(raw), recursive=True), None) is None):
            missing.append(raw)
    return missing


def _expand(pattern: str) -> Iterator[tuple[str, bool]]:
    for match in sorted(glob.iglob(os.path.expanduser(pattern), recursive=True)):
        if Path(match).is_dir():
            for found in _walk(Path(match)):
                yield found, True
        else:
            yield match, False


def _walk(root: Path) -> Iterator[str]:
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield os.path.join(folder, name)


def _list_s3(uri: str) -> Iterator[tuple[str, bool]]:
    """An object named exactly (reported if it is no image), else every object under the
    prefix `KEY/` (walked: non-images skipped). Keys come in the store's order (UTF-8
    binary order on S3), one page (1,000 keys) at a time; hidden names are skipped, and
    so are folder markers (keys ending in `/`)."""
    bucket, key = split_s3(uri)
    client = _client()
    if key and not key.endswith("/") and _exists(client, bucket, key, uri):
        yield uri, False
        return
    prefix = key if not key or key.endswith("/") else key + "/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    try:
        for page in pages:
            for entry in page.get("Contents", []):
                name = entry["Key"]
                if name.endswith("/") or any(part.startswith(".")
                                             for part in name[len(prefix):].split("/")):
                    continue
                yield f"{S3_SCHEME}{bucket}/{name}", True
    except Exception as exc:
        if isinstance(exc, ConfigError):
            raise
        error = _os_error(exc, uri)
        raise ConfigError(f"cannot list {uri}: {error.strerror}",
                          hint="check the bucket name and the store's credentials") from exc


def _exists(client: Any, bucket: str, key: str, uri: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as exc:
        error = _os_error(exc, uri)
        if isinstance(error, FileNotFoundError):
            return False
        raise ConfigError(f"cannot read {uri}: {error.strerror}",
                          hint="check the bucket name and the store's credentials") from exc
