"""The serving engine: a Bundle on ONNX Runtime, behind micro-batching, hot-swappable.

`Engine` owns the loaded model (`LoadedModel`: Bundle + ORT session + version), a thread
pool that decodes and prepares uploads off the event loop, and the `MicroBatcher`. It
never imports torch. ONNX Runtime is configured for serving on a shared CPU: intra-op
threads = cores / workers (one for a model whose run is too short to share out),
sequential execution (one graph run at a time on the inference
thread, parallel inside it), full graph optimisation, and no thread spinning by default
(spinning threads steal the cores the decoders and the HTTP server need).

`reload()` loads and warms the new model on a worker thread while the old one keeps
serving, then swaps one reference: requests in flight finish on the model they were
prepared for, new ones get the new model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.export.bundle import Bundle, load_bundle
from visiondeck.export.int8_repair import EXACT_KERNEL_OPTION, exact_kernel_needed
from visiondeck.serve.errors import ModelUnavailable, Overloaded
from visiondeck.serve.inference.batching import MicroBatcher, RowResult
from visiondeck.serve.inference.preprocess import PreparedImage, is_small_image, prepare_image
from visiondeck.serve.labelsets import check_servable
from visiondeck.serve.settings import ServeSettings

__all__ = ["Engine", "LoadedModel", "load_model", "source_fingerprint"]

log = logging.getLogger("visiondeck.serve")
EMBEDDING_OUTPUT = "embedding"


@dataclass
class LoadedModel:
    """A Bundle with its ORT session, ready to run."""

    bundle: Bundle
    session: Any  # onnxruntime.InferenceSession
    variant: str
    version: str  # content hash of bundle.json + the ONNX file (changes with any re-export)
    source: str
    loaded_at: datetime
    load_seconds: float
    fingerprint: str
    max_batch: int
    input_name: str
    logits_name: str
    embedding_name: str | None
    threads: int = 1  # ONNX Runtime intra-op threads of `session`
    #: multi-label Bundles: each label's threshold in class order (`Calibration.thresholds`)
    label_thresholds: np.ndarray | None = None

    @property
    def multilabel(self) -> bool:
        return self.label_thresholds is not None

    @property
    def name(self) -> str:
        return self.bundle.name

    def run(self, batch: np.ndarray) -> list[RowResult]:
        """One ORT run + calibration for a stacked float32 batch (inference thread)."""
        start = time.perf_counter()
        names = [self.logits_name] + ([self.embedding_name] if self.embedding_name else [])
        outputs = self.session.run(names, {self.input_name: batch})
        logits = outputs[0]
        calibration = self.bundle.calibration
        passed = None
        if self.label_thresholds is not None:  # a sigmoid per label, each its own threshold
            probabilities = calibration.label_probabilities(logits)
            passed = probabilities >= self.label_thresholds
            predicted = probabilities.argmax(axis=-1)
        else:
            probabilities = calibration.probabilities(logits)
            predicted = calibration.decide(probabilities, self.bundle.classes)
        unknown = calibration.unknown(logits, probabilities)
        elapsed = (time.perf_counter() - start) * 1000.0
        embedding = outputs[1] if self.embedding_name else None
        n = batch.shape[0]
        return [RowResult(probabilities[i], int(predicted[i]), bool(unknown[i]),
                          None if embedding is None else embedding[i], n, elapsed,
                          None if passed is None else passed[i])
                for i in range(n)]


def source_fingerprint(source: str) -> str:
    """Cheap identity of what `source` points at now (stat only, plus URI resolution)."""
    return _folder_fingerprint(_resolve(source))


def _folder_fingerprint(folder: Path) -> str:
    if not folder.is_dir():
        return f"missing:{folder}"
    parts = [str(folder.resolve())]
    for name in sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".onnx")):
        info = (folder / name).stat()
        parts.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _resolve(source: str) -> Path:
    if source.startswith("models:/"):
        from visiondeck.registry import resolve_bundle  # type: ignore[attr-defined]

        return Path(resolve_bundle(source))
    return Path(source)


#: with `threads_auto`, a model whose one-image run takes less than this keeps to one
#: ONNX Runtime thread: handing a run this short to a thread pool and collecting it costs
#: more CPU than the second thread saves (measured on the Fashion-MNIST CNN: 0.45 ms of CPU
#: an image with one thread, 0.71 ms with two), and on a loaded server that CPU is what
#: the event loop and the other workers need
SINGLE_THREAD_BELOW_MS = 2.0


def load_model(source: str, *, variant: str = "auto", threads: int = 1,
               spinning: bool = False, max_batch: int = 32,
               threads_auto: bool = False) -> LoadedModel:
    """Read the Bundle, open its ONNX model in ORT and warm it up (blocking).

    `threads_auto`: `threads` is an upper bound; a model too quick to gain from parallel
    runs gets one thread (see `SINGLE_THREAD_BELOW_MS`).
    """
    start = time.perf_counter()
    folder = _resolve(source)
    bundle = load_bundle(folder)
    check_servable(bundle)
    thresholds = None
    if bundle.multilabel:
        thresholds = bundle.calibration.thresholds(bundle.classes)
    fingerprint = _folder_fingerprint(bundle.path)
    variant = bundle.resolve_variant(variant)
    onnx_file = bundle.onnx_path(variant)
    exact = exact_kernel_needed(bundle.variants.get(variant))
    session = _open_session(onnx_file, threads, spinning, exact)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    input_name = "input" if "input" in inputs else next(iter(inputs))
    logits_name = "logits" if "logits" in outputs else outputs[0]
    batch_dim = inputs[input_name].shape[0]
    limit = max_batch if not isinstance(batch_dim, int) else max(1, min(max_batch, batch_dim))
    digest = hashlib.sha256((bundle.path / "bundle.json").read_bytes())
    with open(onnx_file, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    model = LoadedModel(
        bundle=bundle, session=session, variant=variant, version=digest.hexdigest()[:12],
        source=source, loaded_at=datetime.now(UTC), load_seconds=0.0, fingerprint=fingerprint,
        max_batch=limit, input_name=input_name, logits_name=logits_name,
        embedding_name=EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in outputs else None,
        threads=threads, label_thresholds=thresholds,
    )
    _warm(model)
    if threads_auto and threads > 1 and _one_image_ms(model) < SINGLE_THREAD_BELOW_MS:
        model.session = _open_session(onnx_file, 1, spinning, exact)
        model.threads = 1
        _warm(model)
    model.load_seconds = time.perf_counter() - start
    return model


def _open_session(onnx_file: Path, threads: int, spinning: bool, exact: bool) -> Any:
    """`exact`: an INT8 model that needs ORT's non-saturating kernel on this CPU
    (`int8_repair.exact_kernel_needed`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3
    if exact:
        options.add_session_config_entry(EXACT_KERNEL_OPTION, "1")
    try:
        return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelUnavailable(f"ONNX Runtime cannot load {onnx_file}: {exc}",
                               hint="re-export the run with `visiondeck export`") from None


def _warm(model: LoadedModel) -> None:
    """First runs allocate; keep that off the first requests, without paying for a full
    max-size batch at start-up (0.7 s for EfficientNet-Lite0 at 32×224²)."""
    for size in sorted({1, min(model.max_batch, 8)}):
        model.run(np.zeros((size, *model.bundle.input.shape), dtype=np.float32))


def _one_image_ms(model: LoadedModel, runs: int = 5) -> float:
    """Median wall time of a one-image run, warm (a first run that is already long stops
    the measurement: one is enough to know the model is not small)."""
    one = np.zeros((1, *model.bundle.input.shape), dtype=np.float32)
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        model.session.run([model.logits_name], {model.input_name: one})
        times.append((time.perf_counter() - started) * 1000.0)
        if times[-1] > 4 * SINGLE_THREAD_BELOW_MS:
            break
    return float(np.median(times))


def lower_thread_priority(nice: int) -> None:
    """Give the calling thread a higher nice value (Linux schedules threads one by one, so
    this leaves the process's other threads alone). Decoding large uploads is the only work
    of this server whose amount a client chooses; niced, it takes the cores the event loop
    leaves, and a flood of big images delays other decodes, not `/health` or the answers of
    requests already decoded. Elsewhere (no per-thread nice) it does nothing."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), max(current, nice))
    except OSError as exc:  # a sandbox that forbids it: run at the normal priority
        log.debug("decode threads keep their priority: %s", exc)


class Engine:
    """Prepare → batch → run → calibrate, for one served model that can be swapped."""

    def __init__(self, settings: ServeSettings, metrics: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._model: LoadedModel | None = None
        self._decode_pool: ThreadPoolExecutor | None = None
        self._reload_lock = asyncio.Lock()
        self.batcher = MicroBatcher(self._run, max_batch=settings.max_batch,
                                    max_wait_s=settings.max_wait_ms / 1000.0,
                                    batch_limit=lambda model: model.max_batch)
        self.in_flight = 0
        self.load_error: str | None = None

    # -------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._decode_pool = ThreadPoolExecutor(
            self.settings.decode_threads, thread_name_prefix="visiondeck-decode",
            initializer=lower_thread_priority, initargs=(self.settings.decode_nice,))
        await self.batcher.start()
        try:
            self._model = await asyncio.to_thread(self._load)
        except Exception as exc:
            self.load_error = str(exc)
            raise
        self._announce(self._model)

    async def stop(self) -> None:
        await self.batcher.stop()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=True)

    def _load(self) -> LoadedModel:
        s = self.settings
        return load_model(s.bundle, variant=s.variant, threads=s.ort_threads,
                          spinning=s.ort_spinning, max_batch=s.max_batch,
                          threads_auto=not s.intra_op_threads)

    async def reload(self) -> tuple[LoadedModel, bool]:
        """Load the source again; swap only if it changed. (model, swapped)."""
        async with self._reload_lock:
            try:
                fresh = await asyncio.to_thread(self._load)
            except Exception:
                if self.metrics is not None:
                    self.metrics.reloads.labels("failed").inc()
                raise
            old = self._model
            if old is not None and fresh.version == old.version:
                old.fingerprint = fresh.fingerprint
                if self.metrics is not None:
                    self.metrics.reloads.labels("unchanged").inc()
                return old, False
            self._model = fresh
            self.load_error = None
            self._announce(fresh)
            if self.metrics is not None:
                self.metrics.reloads.labels("swapped").inc()
            log.info("now serving %s version %s (was %s)", fresh.name, fresh.version,
                     old.version if old else None)
            return fresh, True

    def _announce(self, model: LoadedModel) -> None:
        if self.metrics is not None:
            self.metrics.set_model(model.name, model.version, model.variant)

    # -------------------------------------------------------------------- state

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise ModelUnavailable("the model is not loaded yet" if self.load_error is None
                                   else f"the model could not be loaded: {self.load_error}",
                                   hint="wait for /ready, or check the server log")
        return self._model

    @contextlib.contextmanager
    def admit(self, count: int = 1) -> Iterator[None]:
        """Count `count` images in flight; 503 at once when the server is at capacity."""
        if self.in_flight + count > self.settings.max_pending:
            raise Overloaded(f"{self.in_flight} images in flight (limit "
                             f"{self.settings.max_pending})")
        self.in_flight += count
        if self.metrics is not None:
            self.metrics.in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= count
            if self.metrics is not None:
                self.metrics.in_flight.set(self.in_flight)

    # -------------------------------------------------------------------- the work

    async def prepare(self, data: bytes) -> tuple[LoadedModel, PreparedImage]:
        """Decode + prepare for the model being served now: small images inline, others in
        the pool.

        A thumbnail-sized plain PNG (a 28×28 one decodes in ~50 µs) costs less to decode on
        the event loop than the two thread hand-overs of the pool; everything else goes to
        the pool so the loop never blocks on it - a small header is no proof of small work
        (compressed PNG text, progressive JPEG scans, frames: see `is_small_image`).
        Limits come from `imaging.model_decode_limits` (in `prepare_image`).
        """
        model = self.model
        s = self.settings

        def work() -> PreparedImage:
            return prepare_image(
                data, model.bundle, max_bytes=s.max_upload_bytes, max_pixels=s.max_pixels,
                thumbnail_size=s.thumbnail_size if s.store and s.store_thumbnails else None)

        start = time.perf_counter()
        if is_small_image(data):
            prepared = work()
        else:
            self.batcher.incoming += 1
            try:
                prepared = await asyncio.get_running_loop().run_in_executor(
                    self._decode_pool, work)
            finally:
                self.batcher.incoming -= 1
        if self.metrics is not None:
            self.metrics.preprocess.observe(time.perf_counter() - start)
        return model, prepared

    async def infer(self, model: LoadedModel, prepared: PreparedImage) -> RowResult:
        return await self.batcher.infer(model, prepared.tensor)

    def _run(self, model: LoadedModel, batch: np.ndarray) -> list[RowResult]:
        start = time.perf_counter()
        results = model.run(batch)
        if self.metrics is not None:
            self.metrics.batch_size.observe(batch.shape[0])
            self.metrics.inference.observe(time.perf_counter() - start)
        return results
