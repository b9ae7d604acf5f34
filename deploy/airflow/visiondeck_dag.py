"""Airflow DAG: the VisionDeck pipeline, one task per step.

Each task calls the same function `visiondeck pipeline` runs for that step
(`visiondeck.pipeline.step_check` ... `step_promote`). The steps hand their results to each
other through the pipeline's state file (`<output_dir>/pipeline/<recipe name>/state.json`),
not through XCom, so a task that Airflow retries, or a DAG run started after a failure,
skips what already finished and resumes where it stopped; a retried `train` continues the
killed training from its last checkpoint.

Install: put this file in the DAGs folder of an Airflow whose workers have VisionDeck
installed (`pip install "visiondeck[all]"`). Trigger with the recipe as a parameter:

    airflow dags trigger visiondeck_pipeline --conf '{"recipe": "configs/sample.yaml",
        "workdir": "/srv/visiondeck", "overrides": ["train.epochs=3"]}'

`workdir` is the folder relative recipe paths are read from (the project folder); it
defaults to $VISIONDECK_WORKDIR, else the worker's current directory.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

try:  # Airflow 3: the task SDK is the authoring interface
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG, Param
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.models.param import Param
    from airflow.operators.python import PythonOperator

from visiondeck.pipeline.steps import STEP_NAMES

DAG_ID = "visiondeck_pipeline"


def run_step(step: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one pipeline step for the DAG run's recipe; the report goes to XCom as JSON."""
    import visiondeck.pipeline as pipeline

    workdir = params.get("workdir") or os.environ.get("VISIONDECK_WORKDIR")
    if workdir:
        os.chdir(workdir)  # recipes name their data and output folders relative to it
    function = getattr(pipeline, f"step_{step}")
    report = function(params["recipe"], overrides=list(params.get("overrides") or ()),
                      force=bool(params.get("force", False)))
    return report.to_json()


with DAG(
    dag_id=DAG_ID,
    description="VisionDeck: check → split → train → evaluate → export → register → promote",
    schedule=None,  # triggered (by hand, by a sensor on new data, or by `visiondeck retrain`)
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,  # one pipeline per recipe at a time (the state file is locked too)
    tags=["visiondeck", "ml"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "recipe": Param(os.environ.get("VISIONDECK_RECIPE", "configs/sample.yaml"),
                        type="string", description="recipe YAML"),
        "overrides": Param([], type="array", description="key=value overrides"),
        "force": Param(False, type="boolean", description="re-run steps even when unchanged"),
        "workdir": Param(os.environ.get("VISIONDECK_WORKDIR", ""), type="string",
                         description="folder relative recipe paths are read from"),
    },
) as dag:
    previous = None
    for name in STEP_NAMES:
        task = PythonOperator(task_id=name, python_callable=run_step,
                              op_kwargs={"step": name}, doc_md=f"`visiondeck.pipeline."
                                                              f"step_{name}`")
        if previous is not None:
            previous >> task
        previous = task
