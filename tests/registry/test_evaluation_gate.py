"""`register` refuses a run that failed its evaluation gate unless forced, and records it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from visiondeck.registry.errors import RegistryRefusal
from visiondeck.registry.models import register


def test_register_refuses_a_failed_evaluation_gate_unless_forced(
    tracked, bundles, tmp_path: Path, model_name: str
) -> None:
    from mlflow import MlflowClient

    from visiondeck.evaluate.core import evaluate_run

    run = Path(shutil.copytree(tracked.alpha, tmp_path / "gated"))
    failed = evaluate_run(run, gate="accuracy>1", n_boot=20, report=False)
    assert failed.gate["passed"] is False
    with pytest.raises(RegistryRefusal, match=r"failed its evaluation gate accuracy>1") as info:
        register(run, model_name)
    assert "--force" in info.value.hint
    done = register(run, model_name, force=True)
    assert done.forced and done.gate == "failed_evaluation_gate"
    tags = (
        MlflowClient(tracking_uri=tracked.uri, registry_uri=tracked.uri)
        .get_model_version(model_name, done.version)
        .tags
    )
    assert tags["visiondeck.forced"] == "true"
    assert "evaluation gate accuracy>1" in tags["visiondeck.forced_reason"]

    passed = evaluate_run(run, gate="accuracy>=0", n_boot=20, report=False)
    assert passed.gate["passed"] is True
    again = register(run, model_name)
    assert again.gate == "passed" and not again.forced
