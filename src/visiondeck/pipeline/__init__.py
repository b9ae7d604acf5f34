"""The pipeline: check → split → train → evaluate → export → register → promote.

`run_pipeline(recipe)` runs every step whose inputs changed since the last run (content
hashes recorded in `<output_dir>/pipeline/<name>/state.json`), skips the others and resumes
after a failure; `step_check` ... `step_promote` run one step with the same rules (the
Airflow DAG's tasks). Names resolve lazily: importing this package imports no torch.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "PipelineError": "visiondeck.pipeline.state",
    "PipelineFailed": "visiondeck.pipeline.runner",
    "PipelineResult": "visiondeck.pipeline.runner",
    "STEPS": "visiondeck.pipeline.steps",
    "STEP_NAMES": "visiondeck.pipeline.steps",
    "StepRecord": "visiondeck.pipeline.state",
    "StepReport": "visiondeck.pipeline.runner",
    "run_pipeline": "visiondeck.pipeline.runner",
    "run_step": "visiondeck.pipeline.runner",
    "state_dir": "visiondeck.pipeline.runner",
    "step_check": "visiondeck.pipeline.runner",
    "step_evaluate": "visiondeck.pipeline.runner",
    "step_export": "visiondeck.pipeline.runner",
    "step_promote": "visiondeck.pipeline.runner",
    "step_register": "visiondeck.pipeline.runner",
    "step_split": "visiondeck.pipeline.runner",
    "step_train": "visiondeck.pipeline.runner",
    "summary_table": "visiondeck.pipeline.summary",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
