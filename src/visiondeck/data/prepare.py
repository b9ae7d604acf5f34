"""The first stage of the flow as plain functions: check a source, then split it.

Each stage keeps its outputs in a *prepared* folder (catalog.jsonl, data_report.json,
split.csv/json, classes.json). The catalog doubles as a cache for the next scan, and an
existing split is reused only when the data and the split parameters are unchanged, so the
CLI, notebooks and the pipeline all get the same answer from the same files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from visiondeck.config import DataConfig
from visiondeck.data.catalog import MIN_DECODABLE_SIDE, Catalog, decode_limits, scan
from visiondeck.data.sources import Source, open_source
from visiondeck.data.split import (
    Split,
    SplitCheck,
    SplitRecord,
    load_split,
    make_split,
    save_split,
    verify_split,
)
from visiondeck.data.validate import DataReport, validate
from visiondeck.errors import DataError, SplitMismatchError
from visiondeck.imaging import DecodeLimits

__all__ = [
    "CheckResult",
    "SplitOutcome",
    "check_data",
    "default_prepared_dir",
    "prepare_split",
]

CATALOG_FILE = "catalog.jsonl"
REPORT_FILE = "data_report.json"


def default_prepared_dir(source: Source) -> Path:
    return Path("prepared") / source.root.name


@dataclass(frozen=True)
class CheckResult:
    source: Source
    catalog: Catalog
    report: DataReport
    prepared: Path
    reused: int  # files whose previous scan result was still valid


def check_data(
    spec: str | os.PathLike[str],
    *,
    prepared: str | os.PathLike[str] | None = None,
    limits: DecodeLimits | None = None,
    workers: int | None = None,
    progress: bool = False,
    data_root: str | None = None,
    size_outliers: bool | None = None,
    task: str = "auto",
) -> CheckResult:
    """Scan and validate a source; write catalog.jsonl and data_report.json.

    `task` (the recipe's `data.task`): "auto" detects a multi-label manifest from its
    columns (see `sources.open_source`), "single" or "multilabel" say it.

    `size_outliers` (default: when `limits` sets no floor above the decodable minimum):
    flag images far smaller than the set's own (`validate.mark_size_outliers`).
    """
    source = open_source(spec, data_root=data_root, task=task)
    out = Path(prepared) if prepared else default_prepared_dir(source)
    cache = _load_cache(out / CATALOG_FILE)
    catalog = scan(source, limits=limits, workers=workers, cache=cache, progress=progress)
    if size_outliers is None:
        size_outliers = catalog.limits.min_side <= MIN_DECODABLE_SIDE
    report = validate(catalog, size_outliers=size_outliers)
    catalog.save(out / CATALOG_FILE)
    report.save(out / REPORT_FILE)
    reused = 0
    if cache is not None:
        previous = {e.relpath: e for e in cache.entries}
        reused = sum(1 for e in catalog.entries if previous.get(e.relpath) is e)
    return CheckResult(source, catalog, report, out, reused)


def _load_cache(path: Path) -> Catalog | None:
    if not path.exists():
        return None
    try:
        return Catalog.load(path)
    except DataError:
        return None  # a damaged cache only costs a full rescan


@dataclass(frozen=True)
class SplitOutcome:
    split: Split
    check: CheckResult
    reused: bool
    changes: SplitCheck | None  # what changed since the previous split, when one existed
    test_split: Split | None = None  # all of data.test_source, when the recipe names one


def prepare_split(
    cfg: DataConfig,
    *,
    source: str | os.PathLike[str] | None = None,
    prepared: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: bool = False,
    data_root: str | None = None,
) -> SplitOutcome:
    """Check the data, then reuse the saved split if nothing changed, or write a new one.

    A changed data set or changed split parameters with an existing split is an error unless
    `force` is given: silently re-splitting would make every earlier result incomparable.
    """
    if cfg.test_source:
        # the test set is given separately (e.g. an official test split): carve only val
        cfg = cfg.model_copy(update={"test_fraction": 0.0})
    limits = decode_limits(cfg)
    result = check_data(
        source or cfg.source, prepared=prepared or cfg.prepared, limits=limits,
        workers=cfg.num_workers, progress=progress, data_root=data_root,
        size_outliers=cfg.min_size is None, task=cfg.task,
    )
    params = {"seed": cfg.seed, "val_fraction": cfg.val_fraction,
              "test_fraction": cfg.test_fraction, "folds": cfg.folds}
    split_json = result.prepared / "split.json"
    changes = None
    if split_json.exists():
        previous = load_split(result.prepared)
        changes = verify_split(previous, result.catalog)
        same_params = all(
            json.loads(split_json.read_text())[k] == v for k, v in params.items()
        )
        if (changes.ok and same_params and previous.root == result.source.root
                and previous.task == result.catalog.task):
            return SplitOutcome(previous, result, True, changes, _test_split(cfg, result, limits,
                                                                             progress, data_root))
        if not force:
            why = (f"the data changed: {changes.describe()}" if not changes.ok
                   else "the split parameters or the data location changed")
            raise SplitMismatchError(
                f"a split already exists in {result.prepared} and {why}",
                hint="pass --force to write a new split (earlier results will not be "
                "comparable), or choose another --out folder",
            )
    split = make_split(
        result.report.usable, root=result.source.root, val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction, folds=cfg.folds, seed=cfg.seed,
        task=result.catalog.task,
    )
    save_split(split, result.prepared)
    return SplitOutcome(split, result, False, changes,
                        _test_split(cfg, result, limits, progress, data_root))


def _test_split(cfg: DataConfig, main: CheckResult, limits: DecodeLimits, progress: bool,
                data_root: str | None) -> Split | None:
    """Every usable file of `data.test_source` as the test subset, with the main classes."""
    if not cfg.test_source:
        return None
    check = check_data(cfg.test_source, prepared=main.prepared / "test_source", limits=limits,
                       workers=cfg.num_workers, progress=progress, data_root=data_root,
                       size_outliers=cfg.min_size is None, task=main.catalog.task)
    classes = main.report.classes
    if check.catalog.task != main.catalog.task:
        raise DataError(f"the test source is {check.catalog.task}, the training data "
                        f"{main.catalog.task}", hint="give both sources in the same form")
    unknown = sorted(set(check.report.classes) - set(classes))
    if unknown:
        raise DataError(f"the test source has classes the training data lacks: {unknown}",
                        hint="test and training data must use the same class folders")
    records = [SplitRecord(e.relpath, e.label, e.sha256, "test") for e in check.report.usable]
    meta = {"task": main.catalog.task} if main.catalog.task != "single" else {}
    split = Split(check.source.root, classes, records, cfg.seed, 0.0, 1.0, meta=meta)
    save_split(split, check.prepared)
    return split
