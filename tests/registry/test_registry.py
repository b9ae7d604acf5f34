"""The model registry on the embedded store: register, promote, resolve (with its cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from visiondeck.cli import app
from visiondeck.registry.errors import RegistryError, RegistryRefusal
from visiondeck.registry.models import promote, register
from visiondeck.registry.resolve import parse_model_uri, resolve_bundle
from visiondeck.registry.runlog import bundle_digest
from visiondeck.registry.store import read_link

runner = CliRunner()


def _client(tracked):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracked.uri, registry_uri=tracked.uri)


def _failed_copy(run: Path, where: Path) -> Path:
    """A copy of a run whose quality gate failed (run.json says so)."""
    copy = where / "failed-run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    info["status"] = "failed_gate"
    info["gate"] = {"metric": "val_acc", "threshold": 0.99, "value": 0.5, "passed": False}
    (copy / "run.json").write_text(json.dumps(info))
    return copy


def test_register_a_run_that_passed_its_gate(tracked, bundles, model_name) -> None:
    done = register(tracked.alpha, model_name)
    link = read_link(tracked.alpha)
    assert done.version == "1" and done.gate == "passed" and not done.forced
    assert done.run_id == link.run_id  # the Bundle lives on the run that trained it
    digest = bundle_digest(bundles.alpha)
    assert done.source == f"runs:/{link.run_id}/bundle-{digest[:12]}"
    version = _client(tracked).get_model_version(model_name, "1")
    assert version.tags["visiondeck.gate"] == "passed"
    assert version.tags["visiondeck.bundle_digest"] == digest
    assert version.tags["visiondeck.metric.macro_f1"] == "0.9"
    assert "visiondeck.forced" not in version.tags
    again = register(bundles.alpha, model_name)  # the Bundle folder works too
    assert again.version == "2" and again.source == done.source  # same content, no re-upload


def test_register_refuses_a_failed_gate_unless_forced(tracked, tmp_path, model_name) -> None:
    failed = _failed_copy(tracked.alpha, tmp_path)
    with pytest.raises(RegistryRefusal, match=r"failed its quality gate: val_acc = 0\.5 < 0\.99"):
        register(failed, model_name)
    result = runner.invoke(app, ["register", str(failed), "--name", model_name])
    assert result.exit_code == 10, result.output
    assert "quality gate" in result.output and "--force" in result.output
    forced = runner.invoke(app, ["register", str(failed), "--name", model_name, "--force"])
    assert forced.exit_code == 0, forced.output
    assert f"models:/{model_name}/1" in forced.output and "forced" in forced.output
    tags = _client(tracked).get_model_version(model_name, "1").tags
    assert tags["visiondeck.forced"] == "true" and tags["visiondeck.gate"] == "failed_gate"
    assert "val_acc = 0.5 < 0.99" in tags["visiondeck.forced_reason"]


def test_register_needs_a_bundle(tracked, tmp_path, model_name) -> None:
    bare = tmp_path / "bare-run"
    shutil.copytree(tracked.beta, bare, ignore=shutil.ignore_patterns("bundle"))
    with pytest.raises(RegistryError, match="has no Bundle"):
        register(bare, model_name)
    with pytest.raises(RegistryError, match="neither a run folder nor a Bundle"):
        register(tmp_path, model_name)


def test_promote_refuses_a_worse_model_on_the_same_split(tracked, bundles, model_name,
                                                        monkeypatch) -> None:
    monkeypatch.chdir(tracked.runs_root.parent)  # the project folder: runs/ is the store
    good, worse = bundles.make(0.9), bundles.make(0.7)
    elsewhere = bundles.make(0.95, fingerprint="another-split")
    for bundle in (good, worse, elsewhere):
        register(bundle, model_name)
    first = promote(model_name, 1)
    assert first.previous is None and first.alias == "champion"
    with pytest.raises(RegistryRefusal, match=r"worse than the champion .*macro_f1: 0.7000 "
                                              r"vs 0.9000"):
        promote(model_name, 2)
    result = runner.invoke(app, ["promote", model_name, "2", "--alias", "champion"])
    assert result.exit_code == 10 and "worse" in result.output
    with pytest.raises(RegistryRefusal, match="not comparable"):
        promote(model_name, 3)
    client = _client(tracked)
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == "1"
    # a challenger is not compared; a forced champion is recorded
    assert promote(model_name, 2, alias="challenger").previous is None
    forced = runner.invoke(app, ["promote", model_name, "2", "--force"])
    assert forced.exit_code == 0, forced.output
    assert str(client.get_model_version_by_alias(model_name, "champion").version) == "2"
    tags = client.get_model_version(model_name, "2").tags
    assert "worse than the champion" in tags["visiondeck.promote_forced.champion"]
    assert tags["visiondeck.previous.champion"] == "1"
    back = promote(model_name, 1)  # better than the forced champion: allowed as is
    assert back.previous == "2" and back.metric == "macro_f1" and not back.forced
    assert back.value == 0.9 and back.previous_value == 0.7
    with pytest.raises(RegistryError, match="no version 9"):
        promote(model_name, 9)


def test_resolve_by_alias_and_by_version_with_a_cache(tracked, bundles, model_name,
                                                      monkeypatch, tmp_path) -> None:
    from visiondeck.export.bundle import load_bundle
    from visiondeck.registry import resolve

    monkeypatch.chdir(tracked.runs_root.parent)  # the project folder: runs/ is the store
    good, other = bundles.make(0.9), bundles.make(0.91)
    register(good, model_name)
    register(other, model_name)
    promote(model_name, 1)
    uri = f"models:/{model_name}@champion"
    champion = resolve_bundle(uri)
    assert bundle_digest(champion) == bundle_digest(good)
    assert champion.is_relative_to(tmp_path / "model-cache")
    second = resolve_bundle(f"models:/{model_name}/2")
    assert bundle_digest(second) == bundle_digest(other) and second != champion
    latest = resolve_bundle(f"models:/{model_name}/latest")
    assert latest == second

    def offline(*args, **kwargs):
        raise RegistryError("the registry is offline")

    with monkeypatch.context() as patch:
        patch.setattr(resolve, "open_store", offline)
        # a version never changes: served from the cache without asking the registry
        assert resolve_bundle(f"models:/{model_name}/2", runs_root=tracked.runs_root) == second
        with pytest.raises(RegistryError, match="offline"):  # an alias is asked every time
            resolve_bundle(uri, runs_root=tracked.runs_root)
    promote(model_name, 2)
    assert resolve_bundle(uri) == second  # the alias moved
    # every consumer accepts a models:/ URI through the Bundle reader
    assert load_bundle(uri).info["metrics"]["macro_f1"] == 0.91
    assert resolve_bundle(good) == good  # a path comes back as it is
    with pytest.raises(RegistryError, match="cannot resolve"):
        resolve_bundle(f"models:/{model_name}@nobody")


def test_a_lost_artifact_is_detected_not_served(tracked, bundles, model_name) -> None:
    variant = bundles.make(0.5)
    done = register(variant, model_name)
    run_id, path = done.source.removeprefix("runs:/").split("/", 1)
    stored = list((tracked.runs_root / "mlruns" / "artifacts").rglob(
        f"{run_id}/artifacts/{path}/weights.safetensors"))
    assert len(stored) == 1
    stored[0].write_bytes(b"truncated")
    with pytest.raises(RegistryError, match="does not match the Bundle that was registered"):
        resolve_bundle(f"models:/{model_name}/{done.version}", runs_root=tracked.runs_root)


def test_model_uris_are_parsed_strictly() -> None:
    assert parse_model_uri("models:/digits@champion").alias == "champion"
    assert parse_model_uri("models:/digits.v2_a-b/3").name == "digits.v2_a-b"
    with pytest.raises(RegistryError, match="not a valid model name"):  # MLflow refuses "/"
        parse_model_uri("models:/team/digits/3")
    assert parse_model_uri("models:/digits/latest").version == "latest"
    for bad in ("models:/", "models:/digits", "models:/digits/v3", "runs:/abc/model",
                "models:/@champion"):
        with pytest.raises(RegistryError, match="not a model URI"):
            parse_model_uri(bad)


def test_resolving_without_a_registry_says_where_it_looked(tmp_path) -> None:
    with pytest.raises(RegistryError, match="no tracking store at"):
        resolve_bundle("models:/digits@champion", runs_root=tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
