"""The Airflow DAG: one task per pipeline step, in pipeline order, calling the same functions.

With Airflow installed the DAG file is loaded by Airflow's own DagBag. Without it (the
project does not depend on Airflow: its pins would downgrade FastAPI under the service),
the file is imported against a minimal stand-in of the three Airflow names it uses (DAG,
Param, PythonOperator), which records tasks and edges and checks nothing else. Either way
the tasks' callables are then run for real on a tiny recipe.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import types
from pathlib import Path

import pytest
import yaml

from tests.factories import write_learnable
from visiondeck.pipeline import STEP_NAMES

DAG_FILE = Path(__file__).resolve().parents[2] / "deploy" / "airflow" / "visiondeck_dag.py"
DAG_ID = "visiondeck_pipeline"
HAVE_AIRFLOW = importlib.util.find_spec("airflow") is not None


class _FakeDAG:
    current: _FakeDAG | None = None

    def __init__(self, dag_id: str, **kwargs) -> None:
        self.dag_id, self.kwargs, self.tasks, self.edges = dag_id, kwargs, [], set()
        self.params = kwargs.get("params", {})

    def __enter__(self) -> _FakeDAG:
        _FakeDAG.current = self
        return self

    def __exit__(self, *exc) -> None:
        _FakeDAG.current = None


class _FakeOperator:
    def __init__(self, *, task_id: str, python_callable, op_kwargs=None, **kwargs) -> None:
        assert _FakeDAG.current is not None, "operator created outside a DAG"
        self.dag = _FakeDAG.current
        self.task_id, self.python_callable, self.op_kwargs = task_id, python_callable, op_kwargs
        self.dag.tasks.append(self)

    def __rshift__(self, other: _FakeOperator) -> _FakeOperator:
        self.dag.edges.add((self.task_id, other.task_id))
        return other


def _fake_param(default, **kwargs):
    return default


def _load_with_fake_airflow(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    names = {
        "airflow": {},
        "airflow.sdk": {"DAG": _FakeDAG, "Param": _fake_param},
        "airflow.providers": {},
        "airflow.providers.standard": {},
        "airflow.providers.standard.operators": {},
        "airflow.providers.standard.operators.python": {"PythonOperator": _FakeOperator},
    }
    for name, attrs in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("visiondeck_dag", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_with_airflow() -> tuple[list[str], set[tuple[str, str]], dict, dict]:
    """The DAG as Airflow's DagBag parses it."""
    try:
        from airflow.dag_processing.dagbag import DagBag  # Airflow 3
        bag = DagBag(dag_folder=str(DAG_FILE))
    except ImportError:
        from airflow.models import DagBag  # Airflow 2
        bag = DagBag(dag_folder=str(DAG_FILE), include_examples=False)
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[DAG_ID]  # parsed from the file; get_dag would consult the database
    edges = {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}
    calls = {t.task_id: (t.python_callable, t.op_kwargs) for t in dag.tasks}
    return list(dag.task_ids), edges, dict(dag.params), calls


@pytest.fixture
def graph(monkeypatch: pytest.MonkeyPatch):
    if HAVE_AIRFLOW:
        return _load_with_airflow()
    module = _load_with_fake_airflow(monkeypatch)
    dag = module.dag
    assert dag.dag_id == DAG_ID
    return ([t.task_id for t in dag.tasks], dag.edges, dag.params,
            {t.task_id: (t.python_callable, t.op_kwargs) for t in dag.tasks})


def test_dag_has_one_task_per_step_in_pipeline_order(graph) -> None:
    task_ids, edges, params, _ = graph
    assert sorted(task_ids) == sorted(STEP_NAMES)
    # each step feeds the next, nothing else: the edges fix the order
    assert edges == set(itertools.pairwise(STEP_NAMES))
    assert {"recipe", "overrides", "force", "workdir"} <= set(params)


def test_dag_tasks_run_the_pipeline_steps(graph, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the task changes directory to workdir; restored after
    write_learnable(tmp_path / "images")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "dagtiny", "output_dir": "runs", "tracking": {"enabled": False},
        "data": {"source": "images", "image_size": 16, "val_fraction": 0.25,
                 "test_fraction": 0.25, "num_workers": 1},
    }))
    monkeypatch.chdir("/")
    params = {"recipe": str(recipe), "overrides": ["data.seed=7"], "force": False,
              "workdir": str(tmp_path)}
    calls = graph[3]
    for name in ("check", "split"):
        function, kwargs = calls[name]
        report = function(**kwargs, params=params)
        assert report["name"] == name and report["status"] == "ran", report
    again = calls["split"][0](**calls["split"][1], params=params)
    assert again["status"] == "skipped"
    assert (tmp_path / "runs" / "pipeline" / "dagtiny" / "state.json").is_file()
    assert (tmp_path / "prepared" / "images" / "split.csv").is_file()
