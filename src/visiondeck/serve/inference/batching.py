"""Adaptive micro-batching: concurrent requests share one ONNX Runtime run.

Requests put their prepared tensor on an asyncio queue and await a future. One batcher
task takes the first waiting tensor, then everything else already queued, and - only while
other requests are still being decoded (so more are certainly coming) - waits up to
`max_wait_s` for them, up to `max_batch`. A lone request therefore never waits, and under
load batches grow by themselves. The run happens on a single inference thread (ONNX
Runtime parallelises inside the run with its own threads), so the event loop keeps
accepting and decoding while a batch runs, and the next batch fills meanwhile.

A tensor is tied to the model it was prepared for: after a hot reload, tensors prepared
for the old model still run on the old model, so no request is dropped or mis-prepared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MicroBatcher", "RowResult"]

log = logging.getLogger("visiondeck.serve")


@dataclass(frozen=True)
class RowResult:
    """One image's share of a batch run, already calibrated."""

    probabilities: np.ndarray  # float64 [K]
    predicted: int
    unknown: bool
    embedding: np.ndarray | None
    batch_size: int
    inference_ms: float
    #: multi-label models: each label's verdict (probability >= its threshold)
    passed: np.ndarray | None = None


@dataclass
class _Job:
    model: Any
    tensor: np.ndarray
    future: asyncio.Future[RowResult]


# run(model, batch) -> list of RowResult, executed on the inference thread
RunFn = Callable[[Any, np.ndarray], list[RowResult]]


class MicroBatcher:
    def __init__(self, run: RunFn, *, max_batch: int = 32, max_wait_s: float = 0.002,
                 batch_limit: Callable[[Any], int] | None = None) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._batch_limit = batch_limit or (lambda _model: max_batch)
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: list[_Job] = []
        self._task: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.incoming = 0  # requests being decoded: more tensors are on their way
        self.batches = 0

    async def start(self) -> None:
        # a fresh pool per start: `stop` shuts the pool down, and an app whose lifespan is
        # run again (a second TestClient, an ASGI host that restarts it) must still infer
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="visiondeck-infer")
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="visiondeck-batcher")

    async def stop(self) -> None:
        """Finish the jobs already queued, then stop."""
        if self._task is None:
            return
        while self._queue is not None and (not self._queue.empty() or self._carry):
            await asyncio.sleep(0.005)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def queued(self) -> int:
        return (self._queue.qsize() if self._queue else 0) + len(self._carry)

    async def infer(self, model: Any, tensor: np.ndarray) -> RowResult:
        if self._queue is None or self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[RowResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(model, tensor, future))
        return await future

    # --------------------------------------------------------------------- the loop

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            live = [job for job in batch if not job.future.done()]  # drop cancelled ones
            if not live:
                continue
            stacked = np.stack([job.tensor for job in live])
            try:
                results = await loop.run_in_executor(self._pool, self._run, live[0].model,
                                                     stacked)
            except Exception as exc:  # a model failure fails its batch, not the service
                log.exception("inference failed for a batch of %d", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            for job, result in zip(live, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Job]:
        assert self._queue is not None
        first = self._carry.pop(0) if self._carry else await self._queue.get()
        model, limit = first.model, self._batch_limit(first.model)
        batch = [first]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < limit:
            job = self._take_carried(model)
            if job is None:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if self.incoming <= 0 or remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
            if job.model is model:
                batch.append(job)
            else:  # prepared for another model version: its own batch, next
                self._carry.append(job)
        return batch

    def _take_carried(self, model: Any) -> _Job | None:
        for index, job in enumerate(self._carry):
            if job.model is model:
                return self._carry.pop(index)
        return None
