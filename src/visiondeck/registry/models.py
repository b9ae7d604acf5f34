"""The model registry: register a Bundle as a model version, promote it under an alias.

A model version's files *are* a Bundle: `register` uploads the Bundle folder to the MLflow
run that trained it (content-addressed, so a later export cannot change a registered
version) and creates a version pointing at it. Two policies guard the registry, each
overridable with `force=True`, and the override is recorded as a tag on the version:

- register only a run that passed its quality gate (run.json "status") and, when it was
  evaluated with a gate (`evaluate --gate` / `train.gate`), that gate too
  (RUN/evaluation/metrics.json "gate");
- promote to `champion` only a model at least as good as the current champion, measured
  on the same test split (bundle.json "data.fingerprint" and "metrics").

Turning `models:/` URIs back into Bundle folders is `registry.resolve`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondeck.registry.errors import RegistryError, RegistryRefusal
from visiondeck.registry.names import check_model_name
from visiondeck.registry.runlog import DIGEST_TAG, bundle_digest, upload_bundle
from visiondeck.registry.store import Store, open_store, read_link, write_link
from visiondeck.registry.tracking import TAG, log_batch, read_json

__all__ = ["Promotion", "Registration", "promote", "register"]

#: statuses of run.json that may be registered: the gate passed, or none was configured
REGISTRABLE = ("passed", "completed")
#: metrics tried in this order when promote is not told which one decides
DEFAULT_METRICS = ("macro_f1", "accuracy", "balanced_accuracy")
_LOWER_IS_BETTER = ("loss", "error", "ece", "brier", "nll")


# ------------------------------------------------------------------------------ register


@dataclass(frozen=True)
class Registration:
    """A new model version and how it got there."""

    name: str
    version: str
    run_id: str
    source: str
    gate: str  # "passed" | "none" | the refused status, when forced
    forced: bool
    store: str
    bundle: Path


def _locate(target: Path) -> tuple[Path, Path | None]:
    """(Bundle folder, run folder or None) from a run folder or a Bundle folder."""
    if (target / "bundle.json").is_file():
        info = read_json(target / "bundle.json")
        for candidate in (info.get("source_run"), target.parent):
            if candidate and (Path(candidate) / "run.json").is_file():
                return target, Path(candidate)
        return target, None
    if (target / "run.json").is_file():
        if (target / "bundle" / "bundle.json").is_file():
            return target / "bundle", target
        raise RegistryError(f"run {target} has no Bundle to register",
                            hint=f"export it first: visiondeck export {target}")
    raise RegistryError(f"{target} is neither a run folder nor a Bundle",
                        hint="give the folder `visiondeck train` or `visiondeck export` wrote")


def _evaluation_gate(run_dir: Path) -> dict[str, Any] | None:
    """The gate verdict `visiondeck evaluate` stored for the run (None: no gate was set)."""
    path = run_dir / "evaluation" / "metrics.json"
    if not path.is_file():
        return None
    try:
        gate = read_json(path).get("gate")
    except (ValueError, AttributeError):
        return None
    return gate if isinstance(gate, dict) and "passed" in gate else None


def _gate(run_dir: Path | None) -> tuple[str, str | None]:
    """(gate label, refusal reason or None) from the run's run.json and its evaluation."""
    if run_dir is None:
        return "unknown", ("the Bundle's training run was not found, so its quality gate "
                           "cannot be checked")
    info = read_json(run_dir / "run.json")
    status = str(info.get("status", "unknown"))
    evaluated = _evaluation_gate(run_dir) if status in REGISTRABLE else None
    if evaluated is not None and not evaluated["passed"]:
        split = evaluated.get("split", "test")
        failed = [f"{r.get('metric')} {r.get('op')} {r.get('bound')} (val {r.get('val')}, "
                  f"{split} {r.get(split)})"
                  for r in evaluated.get("rules", [])
                  if isinstance(r, dict) and not r.get("passed")]
        return "failed_evaluation_gate", (
            f"run {run_dir.name} failed its evaluation gate {evaluated.get('spec')}: "
            + "; ".join(failed))
    if evaluated is not None:
        return "passed", None
    if status in REGISTRABLE:
        return ("passed" if status == "passed" else "none"), None
    gate = info.get("gate") or {}
    if status == "failed_gate":
        return status, (f"run {run_dir.name} failed its quality gate: {gate.get('metric')} = "
                        f"{gate.get('value')} < {gate.get('threshold')}")
    return status, f"run {run_dir.name} did not finish (status {status!r})"


def register(target: str | os.PathLike[str], name: str, *, force: bool = False,
             tracking_uri: str | None = None, runs_root: str | os.PathLike[str] = "runs",
             description: str | None = None) -> Registration:
    """Register the Bundle of a run (or a Bundle folder) as a new version of model `name`.

    The store is `tracking_uri`, else $MLFLOW_TRACKING_URI, else the store the run was
    tracked in, else the embedded store under `runs_root`. The version's files are the
    Bundle, logged on the training run when it lives in that store (a new "register" run
    otherwise). Raises `RegistryRefusal` for a run that did not pass its gate unless `force`.
    """
    from visiondeck.export.bundle import load_bundle

    check_model_name(name)
    bundle_dir, run_dir = _locate(Path(target))
    bundle = load_bundle(bundle_dir)
    gate, refusal = _gate(run_dir)
    if refusal and not force:
        raise RegistryRefusal(refusal, hint="fix the run, or register anyway with --force "
                                            "(recorded on the model version)")
    link = read_link(run_dir) if run_dir else None
    if tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI") and link:
        store = link.store()
    else:
        store = open_store(tracking_uri, runs_root)
    run_id = _run_for(store, bundle, run_dir, link)
    digest = bundle_digest(bundle_dir)
    artifact = upload_bundle(store, run_id, bundle_dir, digest)
    _ensure_model(store, name, description)
    tags = {f"{TAG}gate": gate, DIGEST_TAG: digest,
            f"{TAG}architecture": bundle.architecture,
            f"{TAG}data_fingerprint": str((bundle.info.get("data") or {}).get("fingerprint")),
            f"{TAG}source_run": str(run_dir.resolve()) if run_dir else ""}
    for key, value in (bundle.info.get("metrics") or {}).items():
        tags[f"{TAG}metric.{key}"] = str(value)
    if refusal:
        tags.update({f"{TAG}forced": "true", f"{TAG}forced_reason": refusal})
    version = store.client.create_model_version(name, artifact.source, run_id=run_id,
                                                tags=tags, description=description)
    return Registration(name, str(version.version), run_id, artifact.source, gate,
                        bool(refusal), store.display, bundle_dir)


def _run_for(store: Store, bundle: Any, run_dir: Path | None, link: Any) -> str:
    """The MLflow run that will hold the Bundle: the training run when it is in `store`."""
    if link is not None and link.store(store.uri).uri == store.uri \
            and store.run_exists(link.run_id):
        return link.run_id
    tags = {f"{TAG}kind": "register", "mlflow.runName": f"register-{bundle.name}"}
    if run_dir is not None:
        tags[f"{TAG}run_dir"] = str(run_dir.resolve())
    fingerprint = (bundle.info.get("data") or {}).get("fingerprint")
    if fingerprint:
        tags[f"{TAG}data_fingerprint"] = str(fingerprint)
    experiment = store.experiment_id(bundle.name or "visiondeck")
    run = store.client.create_run(experiment, run_name=f"register-{bundle.name}", tags=tags)
    metrics = {k: float(v) for k, v in (bundle.info.get("metrics") or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    log_batch(store, run.info.run_id, metrics={f"test_{k}": v for k, v in metrics.items()})
    store.client.set_terminated(run.info.run_id)
    if run_dir is not None and link is None:  # an untracked run now has a home
        write_link(run_dir, tracking_uri=store.uri, run_id=run.info.run_id,
                   experiment_id=experiment, experiment=bundle.name or "visiondeck")
    return run.info.run_id


def _ensure_model(store: Store, name: str, description: str | None) -> None:
    from mlflow.exceptions import MlflowException

    try:
        store.client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        store.client.create_registered_model(name, description=description)
    except MlflowException:  # another process created it a moment ago
        store.client.get_registered_model(name)


# ------------------------------------------------------------------------------- promote


@dataclass(frozen=True)
class Promotion:
    """An alias moved to a version, and the comparison that allowed it."""

    name: str
    version: str
    alias: str
    previous: str | None  # the version that held the alias before
    metric: str | None
    value: float | None
    previous_value: float | None
    forced: bool
    reason: str | None  # why it would have been refused (when forced)


def promote(name: str, version: str | int, *, alias: str = "champion", force: bool = False,
            metric: str | None = None, tracking_uri: str | None = None,
            runs_root: str | os.PathLike[str] = "runs") -> Promotion:
    """Point `alias` at `name` version `version`.

    For the `champion` alias the candidate must be at least as good as the current
    champion on `metric` (default: the first of macro_f1, accuracy, balanced_accuracy both
    Bundles report), measured on the same data fingerprint; otherwise `RegistryRefusal`
    unless `force` (recorded on the version with the reason).
    """
    check_model_name(name)
    store = open_store(tracking_uri, runs_root, must_exist=True)
    version = str(version)
    model_version(store, name, version)
    previous = _alias_version(store, name, alias)
    decided, value, old_value, reason = None, None, None, None
    if alias == "champion" and previous is not None and previous != version:
        candidate = _bundle_json(store, name, version)
        champion = _bundle_json(store, name, previous)
        decided, value, old_value, reason = _compare(candidate, champion, metric,
                                                     version, previous)
        if reason and not force:
            raise RegistryRefusal(reason, hint="promote a better model, or use --force "
                                               "(recorded on the model version)")
    store.client.set_registered_model_alias(name, alias, version)
    from visiondeck.export.bundle import utc_now

    tags = {f"{TAG}promoted.{alias}": utc_now()}
    if previous is not None and previous != version:
        tags[f"{TAG}previous.{alias}"] = previous
    if reason:
        tags[f"{TAG}promote_forced.{alias}"] = reason
    for key, text in tags.items():
        store.client.set_model_version_tag(name, version, key, text)
    return Promotion(name, version, alias, previous, decided, value, old_value,
                     bool(reason), reason)


def _compare(candidate: dict, champion: dict, metric: str | None, version: str,
             previous: str) -> tuple[str | None, float | None, float | None, str | None]:
    """(metric, candidate value, champion value, refusal reason or None)."""
    new_fp = (candidate.get("data") or {}).get("fingerprint")
    old_fp = (champion.get("data") or {}).get("fingerprint")
    if not new_fp or new_fp != old_fp:
        return None, None, None, (f"version {version} was measured on data {new_fp}, the "
                                  f"champion (version {previous}) on {old_fp}: not comparable")
    new_m, old_m = candidate.get("metrics") or {}, champion.get("metrics") or {}
    names = [metric] if metric else [m for m in DEFAULT_METRICS if m in new_m and m in old_m]
    usable = [m for m in names if _number(new_m.get(m)) and _number(old_m.get(m))]
    if not usable:
        wanted = metric or " / ".join(DEFAULT_METRICS)
        return metric, None, None, (f"no {wanted} in both bundle.json files (version "
                                    f"{version} and champion {previous}); evaluate both")
    key = usable[0]
    new, old = float(new_m[key]), float(old_m[key])
    lower = any(word in key.lower() for word in _LOWER_IS_BETTER)
    worse = new > old if lower else new < old
    if worse:
        return key, new, old, (f"version {version} is worse than the champion (version "
                               f"{previous}) on {key}: {new:.4f} vs {old:.4f}")
    return key, new, old, None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def model_version(store: Store, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return store.client.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"model {name!r} has no version {version} in {store.display}",
                            hint="`visiondeck register RUN --name NAME` creates versions") \
            from None


def _alias_version(store: Store, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(store.client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _bundle_json(store: Store, name: str, version: str) -> dict[str, Any]:
    """Just the bundle.json of a version (small: promotion never downloads models)."""
    import mlflow.artifacts

    uri = store.client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="vd-bundle-json-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{uri.rstrip('/')}/bundle.json", dst_path=tmp,
                tracking_uri=store.uri)
        except Exception as exc:
            raise RegistryError(f"version {version} of {name!r} holds no bundle.json ({exc})",
                                hint="register Bundles with `visiondeck register`") from None
        return json.loads(Path(path).read_text(encoding="utf-8"))
