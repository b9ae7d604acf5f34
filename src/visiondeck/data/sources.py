"""Where labelled images come from: a class-folder tree, a manifest, or a built-in set.

A source is resolved to a root folder plus a lazy stream of `SourceFile`s, so a folder of a
million files is walked, never listed into memory by this layer. Class names are always
sorted so the index of a class never depends on the order the file system returns.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from visiondeck.data.multilabel import MULTILABEL, SINGLE, join_labels, split_labels
from visiondeck.errors import DataError
from visiondeck.imaging import sniff_format

__all__ = [
    "MANIFEST_SUFFIXES",
    "Source",
    "SourceFile",
    "builtin_cache_dir",
    "manifest_paths",
    "open_source",
]

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
_PATH_COLUMNS = ("path", "filepath", "file", "filename", "image")
_LABEL_COLUMNS = ("label", "class", "target", "category")
#: a column of this name holds label sets ("a|b|c"): the source is multi-label
_LABELS_COLUMN = "labels"
#: cell values of a one-column-per-label manifest (empty = 0)
_FLAG_VALUES = {"0": False, "1": True, "0.0": False, "1.0": True, "false": False,
                "true": True, "": False}


@dataclass(frozen=True)
class SourceFile:
    """One labelled file; `relpath` (POSIX, relative to the source root) is its identity."""

    relpath: str
    label: str
    path: Path


@dataclass(frozen=True)
class Source:
    root: Path
    kind: Literal["folder", "manifest"]
    manifest: Path | None = None
    #: "single" (one class per file) or "multilabel" (a set of labels per file, written
    #: "a|b" in `SourceFile.label`; see `data.multilabel`)
    task: str = SINGLE
    #: a multi-label manifest with one 0/1 column per label: those columns (else empty)
    label_columns: tuple[str, ...] = ()

    def files(self) -> Iterator[SourceFile]:
        """Stream the labelled files in a deterministic (sorted) order."""
        if self.kind == "folder":
            yield from _walk_folder(self.root)
        elif self.task == MULTILABEL:
            assert self.manifest is not None
            yield from _read_multilabel_manifest(self.manifest, self.root, self.label_columns)
        else:
            assert self.manifest is not None
            yield from _read_manifest(self.manifest, self.root)

    def unlabelled(self) -> list[str]:
        """Images lying directly in a class-folder root: they have no class, so they are
        ignored and reported. Other root files (README, classes.json) are simply ignored."""
        if self.kind != "folder":
            return []
        return sorted(
            e.name for e in os.scandir(self.root)
            if e.is_file() and not e.name.startswith(".") and _looks_like_image(e.path)
        )


def _looks_like_image(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return sniff_format(handle.read(64)) is not None
    except OSError:
        return False


def builtin_cache_dir() -> Path:
    """Where built-in data sets are materialised as image folders."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "visiondeck" / "builtin"


def open_source(spec: str | os.PathLike[str], *, data_root: str | None = None,
                task: str = "auto") -> Source:
    """Resolve a source spec: a directory, a CSV/Parquet manifest, or `builtin:NAME[/subset]`.

    `task` ("auto", "single" or "multilabel", the recipe's `data.task`): "auto" makes a
    manifest with a `labels` column, or with one 0/1 column per label and no label column,
    multi-label; "multilabel" also reads a `label` column as label sets ("a|b").
    """
    text = os.fspath(spec)
    if task not in ("auto", SINGLE, MULTILABEL):
        raise DataError(f"unknown task {task!r}", hint="use auto, single or multilabel")
    if text.startswith("builtin:"):
        _folder_task(text, task)
        return Source(_materialize_builtin(text.removeprefix("builtin:"), data_root), "folder")
    path = Path(text).expanduser()
    if path.is_dir():
        _folder_task(text, task)
        return Source(path.resolve(), "folder")
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(
                f"{path} is a file but not a manifest",
                hint="give a folder with one sub-folder per class, or a .csv/.parquet "
                "manifest with columns path,label",
            )
        found, columns = _manifest_task(path.resolve(), task)
        return Source(path.parent.resolve(), "manifest", path.resolve(), found, columns)
    raise DataError(
        f"data source not found: {text}",
        hint="give a folder of class sub-folders, a manifest file, or builtin:sample",
    )


def _folder_task(text: str, task: str) -> None:
    if task == MULTILABEL:
        raise DataError(f"{text} is a class-folder source: one class per image",
                        hint="give multi-label data as a CSV/Parquet manifest with a labels "
                             "column (a|b|c) or one 0/1 column per label")


def _header(manifest: Path) -> list[str]:
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle).fieldnames or [])
    return list(_parquet(manifest).ParquetFile(manifest).schema_arrow.names)


def _parquet(manifest: Path):  # type: ignore[no-untyped-def]
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(
            "reading a Parquet manifest needs pyarrow",
            hint="pip install 'visiondeck[parquet]', or give the manifest as CSV",
        ) from exc
    return pq


def _manifest_task(manifest: Path, task: str) -> tuple[str, tuple[str, ...]]:
    """(task, 0/1 label columns) of a manifest, per `open_source`'s rules."""
    if task == SINGLE:
        return SINGLE, ()
    columns = _header(manifest)
    lowered = {c.lower().strip(): c for c in columns}
    path_col = next((lowered[c] for c in _PATH_COLUMNS if c in lowered), None)
    has_label = any(c in lowered for c in (_LABELS_COLUMN, *_LABEL_COLUMNS))
    if _LABELS_COLUMN in lowered or (task == MULTILABEL and has_label):
        return MULTILABEL, ()
    if has_label or path_col is None:
        return SINGLE, ()  # the single-label reader names what is missing
    flags = tuple(c for c in columns if c != path_col)
    if flags and _all_flags(manifest, flags):
        return MULTILABEL, flags
    if task == MULTILABEL:
        raise DataError(f"{manifest.name} has no labels column and its other columns "
                        f"{flags} are not all 0/1",
                        hint="give a labels column (a|b|c) or one 0/1 column per label")
    return SINGLE, ()


def _all_flags(manifest: Path, columns: tuple[str, ...]) -> bool:
    for row in _rows(manifest, columns):
        if any(str(v).strip().lower() not in _FLAG_VALUES for v in row):
            return False
    return True


def _rows(manifest: Path, columns: Sequence[str]) -> Iterator[list[str]]:
    """The cells of `columns`, row by row, as text ("" for empty)."""
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                yield [(row.get(c) or "").strip() for c in columns]
        return
    parquet = _parquet(manifest).ParquetFile(manifest)
    for batch in parquet.iter_batches(columns=list(columns), batch_size=10_000):
        values = [batch.column(i).to_pylist() for i in range(len(columns))]
        for row in zip(*values, strict=True):
            yield ["" if v is None else str(int(v) if isinstance(v, bool) else v).strip()
                   for v in row]


def _read_multilabel_manifest(manifest: Path, root: Path, flag_columns: tuple[str, ...]
                              ) -> Iterator[SourceFile]:
    """Label sets from a `labels` (or, with data.task=multilabel, `label`) column of
    "a|b|c" cells, or from one 0/1 column per label; an empty set is allowed."""
    columns = _header(manifest)
    lowered = {c.lower().strip(): c for c in columns}
    path_col = next((lowered[c] for c in _PATH_COLUMNS if c in lowered), None)
    if path_col is None:
        raise DataError(f"{manifest.name} needs a path column; found {columns}",
                        hint=f"name it one of {', '.join(_PATH_COLUMNS)} (first row is the "
                             "header)")
    if flag_columns:
        wanted = [path_col, *flag_columns]
    else:
        label_col = next(lowered[c] for c in (_LABELS_COLUMN, *_LABEL_COLUMNS) if c in lowered)
        wanted = [path_col, label_col]
    for index, row in enumerate(_rows(manifest, wanted), start=2):
        raw_path = row[0]
        if not raw_path:
            raise DataError(f"{manifest.name}, row {index}: empty path")
        if flag_columns:
            try:
                flags = [_FLAG_VALUES[v.lower()] for v in row[1:]]
            except KeyError:
                raise DataError(f"{manifest.name}, row {index}: label columns must hold 0 or "
                                f"1, got {row[1:]}") from None
            label = join_labels(c for c, on in zip(flag_columns, flags, strict=True) if on)
        else:
            label = join_labels(split_labels(row[1]))
        yield _located(raw_path, root, label)


def _located(raw_path: str, root: Path, label: str) -> SourceFile:
    path = Path(raw_path)
    if not path.is_absolute():
        path = root / path
    try:
        relpath = path.resolve().relative_to(root).as_posix()
    except ValueError:
        relpath = path.resolve().as_posix()
    return SourceFile(relpath, label, path)


def _materialize_builtin(name: str, data_root: str | None) -> Path:
    from visiondeck.data.materialize import materialize

    base, _, subset = name.partition("/")
    if not subset and base in ("fashion-mnist", "cifar10"):
        # like every loader of it: the data set means its 60k training images; its official
        # test images are builtin:fashion-mnist/test (e.g. as data.test_source)
        subset = "train"
    out = builtin_cache_dir() / base
    subsets = [subset] if subset else None
    materialize(base, out, subsets=subsets, root=data_root, progress=True)
    return (out / subset) if subset else out


def _walk_folder(root: Path) -> Iterator[SourceFile]:
    classes = sorted(
        e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders",
            hint="put the images of each class in their own sub-folder: root/CLASS/image.png",
        )
    for label in classes:
        for path in _walk_files(root / label):
            yield SourceFile(path.relative_to(root).as_posix(), label, path)


def _walk_files(folder: Path) -> Iterator[Path]:
    """Depth-first and sorted; hidden entries skipped, directory symlinks not followed."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_files(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def _read_manifest(manifest: Path, root: Path) -> Iterator[SourceFile]:
    rows = _manifest_rows(manifest)
    for index, (raw_path, label) in enumerate(rows, start=2):
        if not raw_path or label in (None, ""):
            raise DataError(f"{manifest.name}, row {index}: empty path or label")
        yield _located(raw_path, root, str(label))


def _manifest_rows(manifest: Path) -> Iterator[tuple[str, str]]:
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            path_col, label_col = _pick_columns(manifest, reader.fieldnames or [])
            for row in reader:
                yield (row.get(path_col) or "").strip(), (row.get(label_col) or "").strip()
        return
    table = _parquet(manifest).read_table(manifest)
    path_col, label_col = _pick_columns(manifest, table.column_names)
    paths = table.column(path_col).to_pylist()
    labels = table.column(label_col).to_pylist()
    for p, lab in zip(paths, labels, strict=True):
        yield str(p or "").strip(), "" if lab is None else str(lab).strip()


def manifest_paths(manifest: str | os.PathLike[str]) -> Iterator[str]:
    """The image locations a manifest lists, for prediction: its path column only (a label
    column may be there or not), in row order, streamed (a Parquet manifest a record batch
    at a time). Relative paths are taken from the manifest's folder, as in training;
    `s3://` locations and absolute paths are kept as they are; empty rows are skipped."""
    manifest = Path(manifest)
    root = manifest.parent.resolve()

    def located(raw: str) -> str:
        if raw.startswith("s3://") or os.path.isabs(raw):
            return raw
        return os.path.normpath(root / raw)  # "../x" as the path it names (links kept)

    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            path_col, _ = _pick_columns(manifest, reader.fieldnames or [], need_label=False)
            for row in reader:
                raw = (row.get(path_col) or "").strip()
                if raw:
                    yield located(raw)
        return
    parquet = _parquet(manifest).ParquetFile(manifest)
    path_col, _ = _pick_columns(manifest, parquet.schema_arrow.names, need_label=False)
    for batch in parquet.iter_batches(columns=[path_col], batch_size=10_000):
        for value in batch.column(0).to_pylist():
            raw = str(value or "").strip()
            if raw:
                yield located(raw)


def _pick_columns(manifest: Path, columns: list[str], *, need_label: bool = True
                  ) -> tuple[str, str | None]:
    lowered = {c.lower().strip(): c for c in columns}
    path_col = next((lowered[c] for c in _PATH_COLUMNS if c in lowered), None)
    label_col = next((lowered[c] for c in _LABEL_COLUMNS if c in lowered), None)
    if not need_label:
        if path_col is None:
            raise DataError(f"{manifest.name} needs a path column; found {columns}",
                            hint=f"name it one of {', '.join(_PATH_COLUMNS)} (first row is "
                            "the header)")
        return path_col, label_col
    if path_col is None or label_col is None:
        raise DataError(
            f"{manifest.name} needs a path column and a label column; found {columns}",
            hint="name the columns path,label (first row is the header)",
        )
    return path_col, label_col
