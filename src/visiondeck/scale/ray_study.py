"""`visiondeck ablate … --engine ray` and `evaluate --cv K --engine ray`: a study's cells or
folds as Ray tasks.

The study itself does not change: `evaluate.ablate.ablate` and `evaluate.cv.cross_validate`
plan the jobs, open the parent run, summarise and close it on the driver; only the
*executor* differs. `RayStudyExecutor` sends each job to a Ray task that calls the very
function the local run calls (`ablate.run_cell`, `cv.run_fold`), so training, resuming,
evaluation and the child run are one code path on either engine:

- a task asks for `num_cpus` CPUs (its torch threads follow: Ray sets OMP_NUM_THREADS);
- the task logs its own child run under the parent the driver opened (the study tracker
  travels with the task; its parent link lives in the study folder), so the tracking store
  must be reachable from every node: an MLflow server, or a SQLite store on a shared disk;
- the study folder, the data and the prepared split are read and written at the same paths
  on every node (a shared disk); a task runs in the driver's working directory, so relative
  paths in a recipe mean the same everywhere;
- a task whose worker dies (a lost node, a killed process, out of memory) is retried
  (`retries`, Ray's `max_retries`), as is one that fails with an `OSError` (a shared disk
  hiccup); a retry resumes the cell from what its first attempt left on disk (its last
  checkpoint, its trained model), through the same `run_cell`;
- jobs already evaluated on disk never go to the cluster: the driver reads them back with
  the same function (which records a child run they lack), so a rerun continues the study.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from visiondeck.errors import ConfigError
from visiondeck.scale.ray_predict import require_ray

__all__ = ["RayStudyExecutor", "ablate_on_ray", "cross_validate_on_ray"]

#: driver environment a task needs to reach the same tracking store
_FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME",
                  "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                  "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                  "AWS_DEFAULT_REGION")


class RayStudyExecutor:
    """An `evaluate.ablate.StudyExecutor` that runs each unfinished job as a Ray task.

    address: a Ray cluster (`ray://…` or `host:port`; None: RAY_ADDRESS, else a Ray started
    in this process); num_cpus: CPUs each task asks for; retries: attempts after a lost
    worker or an `OSError`.
    """

    def __init__(self, address: str | None = None, *, num_cpus: float = 1.0,
                 retries: int = 2) -> None:
        if num_cpus <= 0:
            raise ConfigError(f"--cpus-per-task must be positive, not {num_cpus}")
        if retries < 0:
            raise ConfigError(f"--retries must be 0 or more, not {retries}")
        require_ray()  # missing Ray says how to install it before the study opens its run
        self.address = address
        self.num_cpus = num_cpus
        self.retries = retries

    def __call__(self, work: Callable[[Any, Any], Any], jobs: Sequence[Any],
                 tracker: Any) -> Iterator[tuple[int, Any]]:
        ray = require_ray()
        pending = []
        for index, job in enumerate(jobs):
            if job.finished:  # read back here: nothing for the cluster to do
                yield index, work(job, tracker)
            else:
                pending.append(index)
        if not pending:
            return
        own = not ray.is_initialized()
        if own:
            ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
        refs: dict[Any, int] = {}
        try:
            task = ray.remote(_run_job).options(
                num_cpus=self.num_cpus, max_retries=self.retries,
                retry_exceptions=[OSError], name="visiondeck-study-job")
            env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
            refs = {task.remote(work, jobs[i], tracker, os.getcwd(), env): i for i in pending}
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                index = refs.pop(ready[0])
                yield index, ray.get(ready[0])
        finally:
            for ref in refs:  # the study stopped early: its other jobs are not wanted
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            if own:
                ray.shutdown()


def _run_job(work: Callable[[Any, Any], Any], job: Any, tracker: Any, cwd: str,
             env: Mapping[str, str]) -> Any:
    """The Ray task: `work(job, tracker)` in the driver's working directory and tracking
    environment (restored afterwards: Ray reuses the worker process)."""
    saved_env = {key: os.environ.get(key) for key in env}
    saved_cwd = os.getcwd()
    try:
        os.environ.update(env)
        if os.path.isdir(cwd):
            os.chdir(cwd)
        return work(job, tracker)
    finally:
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ablate_on_ray(recipe: Any, vary: Mapping[str, Sequence[str]], *, address: str | None = None,
                  num_cpus: float = 1.0, retries: int = 2, **options: Any) -> Any:
    """`evaluate.ablate.ablate` with one Ray task per cell (same arguments otherwise)."""
    from visiondeck.evaluate.ablate import ablate

    executor = RayStudyExecutor(address, num_cpus=num_cpus, retries=retries)
    return ablate(recipe, vary, executor=executor, **options)


def cross_validate_on_ray(recipe: Any, folds: int = 5, *, address: str | None = None,
                          num_cpus: float = 1.0, retries: int = 2, **options: Any) -> Any:
    """`evaluate.cv.cross_validate` with one Ray task per fold (same arguments otherwise)."""
    from visiondeck.evaluate.cv import cross_validate

    executor = RayStudyExecutor(address, num_cpus=num_cpus, retries=retries)
    return cross_validate(recipe, folds, executor=executor, **options)
