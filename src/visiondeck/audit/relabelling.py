"""`relabel(source, edits)`: a corrected `path,label` manifest from a reviewed suspects CSV.

The audit's `suspects.csv` (`path,given,suggested,score`) is meant to be edited by a person:
keep a row to accept its `suggested` label, change `suggested` to the right class, write
`-` to leave the image out of the new manifest, or delete the row to keep the image as it
was. The images themselves are never touched — the outcome is a new manifest beside the
data, which a recipe takes as `data.source`.

The edits are checked before anything is written, all problems reported at once: every
path must be an image of the source, every label one of its classes (with a "did you mean"),
no path twice, and where the row still says `given`, it must be the label the source gives
now (otherwise the CSV belongs to another version of the data).
"""

from __future__ import annotations

import csv
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from visiondeck._files import atomic_writer
from visiondeck.errors import DataError

__all__ = ["DROP", "RelabelResult", "default_output", "read_edits", "relabel"]

#: the `suggested` value that leaves an image out of the corrected manifest
DROP = "-"
_MAX_SHOWN = 20


@dataclass
class RelabelResult:
    manifest: Path
    rows: int  # images in the new manifest
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # path → (old, new)
    dropped: list[str] = field(default_factory=list)
    unchanged: int = 0  # edit rows that kept the given label


def default_output(source_root: Path, manifest: Path | None) -> Path:
    """Beside the data: `NAME.relabelled.csv` next to a manifest or a class-folder root."""
    if manifest is not None:
        return manifest.with_name(f"{manifest.stem}.relabelled.csv")
    return source_root.with_name(f"{source_root.name}.relabelled.csv")


def read_edits(
    path: str | os.PathLike[str], known: dict[str, str], classes: list[str]
) -> dict[str, str]:
    """path → new label (or DROP), checked against the source's files and classes."""
    edits_file = Path(path)
    try:
        handle = edits_file.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read the edits file {edits_file}: {exc.strerror}") from exc
    problems: list[str] = []
    edits: dict[str, str] = {}
    with handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in columns or "suggested" not in columns:
            raise DataError(
                f"{edits_file.name} needs the columns path and suggested; found {columns}",
                hint="edit the suspects.csv that `visiondeck data audit` wrote "
                "(path,given,suggested,score)",
            )
        try:
            for line, raw in enumerate(reader, start=2):
                row = {
                    str(k).strip().lower(): (v or "").strip()
                    for k, v in raw.items()
                    if k is not None
                }
                problem = _check_row(row, known, classes, edits)
                if problem:
                    problems.append(f"row {line}: {problem}")
                else:
                    edits[row["path"]] = row["suggested"]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{edits_file.name} is not a readable CSV: {exc}") from exc
    if problems:
        shown = "\n  ".join(problems[:_MAX_SHOWN])
        more = f"\n  … and {len(problems) - _MAX_SHOWN} more" if len(problems) > _MAX_SHOWN else ""
        raise DataError(
            f"{edits_file.name} has {len(problems)} problem(s); nothing was "
            f"written:\n  {shown}{more}",
            hint=f"labels must be one of: {', '.join(classes)} (or {DROP} to leave the image out)",
        )
    return edits


def _check_row(
    row: dict[str, str], known: dict[str, str], classes: list[str], seen: dict[str, str]
) -> str | None:
    path, new = row.get("path", ""), row.get("suggested", "")
    if not path:
        return "empty path"
    if path not in known:
        close = difflib.get_close_matches(path, list(known), n=1, cutoff=0.8)
        return (
            f"unknown path {path!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + " — not an image of this source"
        )
    if path in seen:
        return f"{path!r} is listed twice"
    if not new:
        return f"empty label for {path!r} (write a class, or {DROP} to leave it out)"
    if new != DROP and new not in classes:
        close = difflib.get_close_matches(new, classes, n=1, cutoff=0.5)
        return f"unknown class {new!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    given = row.get("given")
    if given and given != known[path]:
        return (
            f"{path!r} is labelled {known[path]!r} in the source, not {given!r}: the "
            "edits belong to another version of the data"
        )
    return None


def relabel(
    source: str | os.PathLike[str],
    edits: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    data_root: str | None = None,
) -> RelabelResult:
    """Write the source's `path,label` manifest with the edits applied; images untouched."""
    from visiondeck.data.sources import open_source

    src = open_source(source, data_root=data_root)
    files = list(src.files())
    known = {f.relpath: f.label for f in files}
    classes = sorted(set(known.values()))
    changes = read_edits(edits, known, classes)
    target = Path(out) if out is not None else default_output(src.root, src.manifest)
    if src.manifest is not None and target.resolve() == src.manifest.resolve():
        raise DataError(
            f"{target} is the source manifest itself",
            hint="write the corrected manifest to another file (--out)",
        )
    base = target.resolve().parent
    result = RelabelResult(target, 0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(target, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for item in files:
            label = changes.get(item.relpath, item.label)
            if label == DROP:
                result.dropped.append(item.relpath)
                continue
            if label != item.label:
                result.changed[item.relpath] = (item.label, label)
            elif item.relpath in changes:
                result.unchanged += 1
            writer.writerow([_relative(item.path, base), label])
            result.rows += 1
    return result


def _relative(path: Path, base: Path) -> str:
    """The image's path relative to the manifest's folder when it lies below it, else
    absolute: the manifest works wherever the pair is moved together."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return resolved.as_posix()
