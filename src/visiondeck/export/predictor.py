"""`Predictor`: a Bundle on ONNX Runtime, for notebooks, scripts and `visiondeck predict`.

Torch-free by design (numpy, Pillow, ONNX Runtime: `pip install visiondeck[serve]`), so the
same code runs in a slim serving image. Inputs are prepared by `Bundle.prepare` (the
training preparation), outputs are calibrated by the Bundle's `Calibration` (temperature,
"unknown" rejection, binary decision threshold), so every consumer answers alike.

Many files: `predict_files` streams them through a pool of worker processes, each decoding
a chunk and running it through its own single-threaded ORT session as one batch. On small
images decoding is Python-bound (threads would serialise on the GIL), and ORT's own thread
pool scales poorly on tiny batches, so "one process per core, each doing decode + batched
inference" is what keeps every core busy. Results come back in input order; a bad file
becomes a `PredictFailure` and never stops the stream. Paths are read lazily and only a
few chunks are in flight, so memory does not grow with the number of files.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visiondeck.export.bundle import Bundle, ImageInput, load_bundle
from visiondeck.export.int8_repair import EXACT_KERNEL_OPTION, exact_kernel_needed
from visiondeck.imaging import ImageDecodeError, Problem
from visiondeck.locations import S3Object, open_location

__all__ = ["LabelScore", "MultiLabelPrediction", "PredictFailure", "Prediction", "Predictor"]

_NOT_IMAGES = (Problem.NOT_AN_IMAGE, Problem.UNSUPPORTED_FORMAT)
# what a single input can be; a list/tuple (or a 4-D uint8 array) is several inputs
_SINGLE = (bytes, bytearray, memoryview, str, os.PathLike, Image.Image)


@dataclass(frozen=True)
class Prediction:
    """One image's answer; `topk` holds (label, calibrated probability), best first."""

    label: str
    index: int
    probability: float
    topk: list[tuple[str, float]]
    unknown: bool = False
    source: str | None = None

    @property
    def ok(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "label": self.label, "index": self.index,
                "probability": self.probability, "unknown": self.unknown,
                "topk": [{"label": label, "probability": p} for label, p in self.topk]}


@dataclass(frozen=True)
class LabelScore:
    """One label of a multi-label answer: its probability and whether it reaches its
    threshold (chosen on validation, carried in the Bundle)."""

    label: str
    probability: float
    threshold: float
    positive: bool

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "probability": self.probability,
                "threshold": self.threshold, "positive": self.positive}


@dataclass(frozen=True)
class MultiLabelPrediction:
    """A multi-label Bundle's answer: every label (in the Bundle's class order) with its
    probability and verdict. `label`, `probability` and `topk` summarise it in the shape of
    a `Prediction` (the passing labels joined by "|", the highest probability, the labels
    by probability), so consumers of one-line results keep working."""

    scores: list[LabelScore]
    top_k: int = 5
    source: str | None = None
    unknown: bool = False

    @property
    def ok(self) -> bool:
        return True

    @property
    def labels(self) -> list[str]:
        """The labels that pass their thresholds, in class order."""
        return [s.label for s in self.scores if s.positive]

    @property
    def label(self) -> str:
        return "|".join(self.labels)

    @property
    def probability(self) -> float:
        return max((s.probability for s in self.scores), default=0.0)

    @property
    def topk(self) -> list[tuple[str, float]]:
        ranked = sorted(self.scores, key=lambda s: -s.probability)[:self.top_k]
        return [(s.label, s.probability) for s in ranked]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "labels": self.labels,
                "scores": [s.to_dict() for s in self.scores]}


@dataclass(frozen=True)
class PredictFailure:
    """An input that could not be predicted: `problem` is the decoder's kind (or "unreadable")."""

    source: str | None
    problem: str
    message: str = field(default="")

    @property
    def ok(self) -> bool:
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "error": self.problem, "message": self.message}


class Predictor:
    """Run a Bundle (folder or `models:/` URI) on ONNX Runtime.

    variant: "auto" (the Bundle's default variant), "fp32" or "int8";
    providers: ORT execution providers (CPU by default);
    threads: ORT intra-op threads (None: ORT's default, one per physical core).
    """

    def __init__(self, bundle_or_uri: Bundle | str | os.PathLike[str], variant: str = "auto",
                 providers: Sequence[str] | None = None, threads: int | None = None,
                 top_k: int = 5) -> None:
        self.bundle = load_bundle(bundle_or_uri)
        self.variant = self.bundle.resolve_variant(variant)
        self.model_path = self.bundle.onnx_path(self.variant)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads = threads
        self.top_k = top_k
        self._session: Any = None

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def session(self) -> Any:
        """The ORT session, created on first use (so constructing a Predictor is cheap)."""
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            if exact_kernel_needed(self.bundle.variants.get(self.variant)):
                options.add_session_config_entry(EXACT_KERNEL_OPTION, "1")
            if self.threads is not None:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(self.model_path), options,
                                                 providers=self.providers)
        return self._session

    # ------------------------------------------------------------------------ in memory

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits of an already prepared float32 (N, C, H, W) batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(["logits"], {"input": batch})[0]

    def predict_prepared(self, batch: np.ndarray, *, top_k: int | None = None,
                         sources: Sequence[str | None] | None = None
                         ) -> list[Prediction] | list[MultiLabelPrediction]:
        """Predictions for a prepared batch (what `Bundle.prepare` returns, stacked)."""
        if len(batch) == 0:
            return []
        return self._answers(self.logits(batch), top_k, sources)

    def predict(self, images: ImageInput | Iterable[ImageInput], *, top_k: int | None = None,
                batch_size: int = 64, errors: str = "raise"
                ) -> list[Prediction | MultiLabelPrediction | PredictFailure]:
        """Predict paths, encoded bytes, PIL images or uint8 arrays (one or a list).

        errors="raise": a bad input raises its `ImageDecodeError` (or TypeError/ValueError
        for an unusable array); errors="report": it becomes a `PredictFailure` in place.
        """
        if errors not in ("raise", "report"):
            raise ValueError("errors must be 'raise' or 'report'")
        items = self._as_list(images)
        out: list[Prediction | MultiLabelPrediction | PredictFailure] = []
        for start in range(0, len(items), batch_size):
            out.extend(self._run_chunk(items[start:start + batch_size], top_k, errors))
        return out

    def predict_files(self, paths: Iterable[str | os.PathLike[str] | S3Object], *,
                      top_k: int | None = None,
                      batch_size: int = 64, workers: int | None = None,
                      skip_non_images: Collection[str] | Callable[[str], bool] = ()
                      ) -> Iterator[Prediction | MultiLabelPrediction | PredictFailure]:
        """Stream many files: results in input order, bad files as `PredictFailure`.

        `paths` is consumed lazily and at most a few batches are in flight at once, so a
        folder of millions of files is predicted in constant memory: pass a generator (the
        CLI walks folders as it goes) and consume the results as they come. A path may be
        an `s3://BUCKET/KEY` URI (or an `S3Object`): read from the store, bounded like a
        file (`visiondeck.locations`).

        skip_non_images: paths (e.g. met while walking a folder) that are dropped silently
        when their bytes are no image format at all (a README beside the pictures), instead
        of being reported; the check is the decoder's own, made in the workers. A callable
        is asked once per path, as the path is taken from `paths`.

        workers: processes (None: one per core; 0 or 1: in this process). Small jobs (under
        two batches) always run here, where no pool start-up has to be paid.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        skip = _skip_test(skip_non_images)
        tasks = _tasks(paths, batch_size, skip)
        count = (os.cpu_count() or 1) if workers is None else workers
        head = list(itertools.islice(tasks, max(count, 2)))
        if count <= 1 or sum(len(chunk) for chunk, _ in head) < 2 * batch_size:
            for chunk, skippable in itertools.chain(head, tasks):
                yield from self._run_chunk(chunk, top_k, "report", skippable)
            return
        count = min(count, len(head))
        context = _pool_context()
        if context.get_start_method() == "fork":
            self._session = None  # no ORT thread pool of ours is copied into the workers
        init = (str(self.bundle.path), self.variant, self.providers, top_k or self.top_k)
        queue = itertools.chain(head, tasks)
        with context.Pool(count, initializer=_worker_init, initargs=init) as pool:
            # two chunks per worker in flight: every worker stays busy, memory stays bounded
            # (Pool.imap would read the whole input ahead and queue every result)
            pending = deque(pool.apply_async(_worker_run, (task,))
                            for task in itertools.islice(queue, 2 * count))
            while pending:
                results = pending.popleft().get()
                following = next(queue, None)
                if following is not None:
                    pending.append(pool.apply_async(_worker_run, (following,)))
                yield from results

    # ------------------------------------------------------------------------ internals

    def _as_list(self, images: Any) -> list[Any]:
        if isinstance(images, _SINGLE):
            return [images]
        if isinstance(images, np.ndarray):
            return list(images) if images.ndim == 4 else [images]
        return list(images)

    def _run_chunk(self, items: Sequence[Any], top_k: int | None, errors: str,
                   skippable: Collection[str] = ()
                   ) -> list[Prediction | MultiLabelPrediction | PredictFailure]:
        prepared: list[np.ndarray] = []
        slots: list[Prediction | MultiLabelPrediction | PredictFailure | None] = []
        names: list[str | None] = []
        for item in items:
            item = open_location(item)  # an s3:// location becomes a bounded object stream
            name = os.fspath(item) if isinstance(item, str | os.PathLike) else _stream_name(item)
            try:
                prepared.append(self.bundle.prepare(item))
                slots.append(None)
                names.append(name)
            except (ImageDecodeError, OSError, TypeError, ValueError) as exc:
                if errors == "raise":
                    raise
                if name in skippable and getattr(exc, "problem", None) in _NOT_IMAGES:
                    continue
                slots.append(_failure(name, exc))
        answers = iter(self.predict_prepared(np.stack(prepared), top_k=top_k, sources=names)
                       if prepared else [])
        return [slot if slot is not None else next(answers) for slot in slots]

    def _answers(self, logits: np.ndarray, top_k: int | None,
                 sources: Sequence[str | None] | None
                 ) -> list[Prediction] | list[MultiLabelPrediction]:
        calibration = self.bundle.calibration
        classes = self.bundle.classes
        if self.bundle.multilabel:
            return self._label_answers(logits, top_k, sources)
        probs = calibration.probabilities(logits)
        unknown = calibration.unknown(logits, probs)
        chosen = calibration.decide(probs, classes)
        k = max(1, min(top_k or self.top_k, len(classes)))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for row, index in enumerate(chosen):
            topk = [(classes[j], round(float(probs[row, j]), 6)) for j in order[row]]
            out.append(Prediction(classes[int(index)], int(index),
                                  round(float(probs[row, index]), 6), topk,
                                  bool(unknown[row]), sources[row] if sources else None))
        return out


    def _label_answers(self, logits: np.ndarray, top_k: int | None,
                       sources: Sequence[str | None] | None) -> list[MultiLabelPrediction]:
        """Multi-label: a sigmoid per label, each against its own threshold."""
        calibration = self.bundle.calibration
        classes = self.bundle.classes
        probs = calibration.label_probabilities(logits)
        thresholds = calibration.thresholds(classes)
        k = max(1, min(top_k or self.top_k, len(classes)))
        out = []
        for row in range(len(probs)):
            scores = [LabelScore(name, round(float(probs[row, j]), 6), float(thresholds[j]),
                                 bool(probs[row, j] >= thresholds[j]))
                      for j, name in enumerate(classes)]
            out.append(MultiLabelPrediction(scores, k, sources[row] if sources else None))
        return out


def _name_of(item: str | S3Object) -> str:
    return item.name if isinstance(item, S3Object) else item


def _stream_name(item: Any) -> str | None:
    """The name a stream carries (an `S3Object`'s URI, an open file's path), if any."""
    name = getattr(item, "name", None) if hasattr(item, "read") else None
    return name if isinstance(name, str) else None


def _failure(name: str | None, exc: BaseException) -> PredictFailure:
    if isinstance(exc, ImageDecodeError):
        return PredictFailure(name, str(exc.problem), exc.message)
    if isinstance(exc, FileNotFoundError):
        return PredictFailure(name, "missing", f"{name}: no such file")
    if isinstance(exc, OSError):
        return PredictFailure(name, "unreadable", f"{name}: {exc.strerror or exc}")
    return PredictFailure(name, "invalid_input", str(exc))


def _skip_test(skip: Collection[str] | Callable[[str], bool]) -> Callable[[str], bool] | None:
    if callable(skip):
        return skip
    if not skip:
        return None
    names = skip if isinstance(skip, set | frozenset) else set(map(os.fspath, skip))
    return names.__contains__


def _tasks(paths: Iterable[str | os.PathLike[str] | S3Object], batch_size: int,
           skip: Callable[[str], bool] | None
           ) -> Iterator[tuple[list[str | S3Object], frozenset[str]]]:
    """(chunk of locations, the names of those whose non-images are skipped), read lazily
    from `paths` (local paths, `s3://` URIs, or `S3Object`s whose reads the caller watches)."""
    source = iter(paths)
    while chunk := [p if isinstance(p, S3Object) else os.fspath(p)
                    for p in itertools.islice(source, batch_size)]:
        names = [_name_of(p) for p in chunk]
        yield chunk, frozenset(n for n in names if skip(n)) if skip else frozenset()


def _pool_context() -> Any:
    """fork on Linux: cheap, and it needs no `if __name__ == "__main__"` guard in the
    caller's script (spawn re-imports the main module in every worker); spawn elsewhere."""
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


# worker-process side of predict_files (module level so it pickles under spawn too)
_WORKER: Predictor | None = None


def _worker_init(bundle: str, variant: str, providers: list[str], top_k: int) -> None:
    global _WORKER
    _WORKER = Predictor(Path(bundle), variant, providers, threads=1, top_k=top_k)


def _worker_run(task: tuple[list[str | S3Object], frozenset[str]]
                ) -> list[Prediction | MultiLabelPrediction | PredictFailure]:
    assert _WORKER is not None, "worker used before its initialiser ran"
    chunk, skippable = task
    try:
        return _WORKER._run_chunk(chunk, None, "report", skippable)
    except Exception as exc:  # never lose a whole chunk silently: name every file of it
        return [PredictFailure(_name_of(item), "error", f"{type(exc).__name__}: {exc}")
                for item in chunk]
