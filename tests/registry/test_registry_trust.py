"""What `models:/` resolution trusts: only versions whose Bundle digest was recorded, and
only names that cannot be read as part of MLflow's filter syntax."""

from __future__ import annotations

import logging

import pytest

from visiondeck.registry.errors import RegistryError
from visiondeck.registry.models import promote, register
from visiondeck.registry.resolve import parse_model_uri, resolve_bundle
from visiondeck.registry.runlog import DIGEST_TAG, bundle_digest

INJECTIONS = ("x' OR name LIKE '%", "{victim}' AND name != 'zzz", "{victim}'--", "%",
              "{victim}\\", "a b")


def _client(tracked):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracked.uri, registry_uri=tracked.uri)


def test_a_version_without_its_digest_is_refused_unless_allowed(
        tracked, bundles, model_name, caplog) -> None:
    variant = bundles.make(0.8)
    done = register(variant, model_name, runs_root=tracked.runs_root)
    promote(model_name, done.version, runs_root=tracked.runs_root)
    _client(tracked).delete_model_version_tag(model_name, done.version, DIGEST_TAG)

    for uri in (f"models:/{model_name}/{done.version}", f"models:/{model_name}@champion",
                f"models:/{model_name}/latest"):
        with pytest.raises(RegistryError, match="no recorded Bundle digest") as caught:
            resolve_bundle(uri, runs_root=tracked.runs_root)
        assert "visiondeck register" in caught.value.hint

    with caplog.at_level(logging.WARNING, logger="visiondeck.registry.resolve"):
        forced = resolve_bundle(f"models:/{model_name}/{done.version}",
                                runs_root=tracked.runs_root, allow_unverified=True)
    assert bundle_digest(forced) == bundle_digest(variant)
    warned = [r for r in caplog.records if "WITHOUT a digest check" in r.getMessage()]
    assert len(warned) == 1 and model_name in warned[0].getMessage()
    # the unchecked download is kept apart: a caller that did not allow it is still refused
    with pytest.raises(RegistryError, match="no recorded Bundle digest"):
        resolve_bundle(f"models:/{model_name}/{done.version}", runs_root=tracked.runs_root)


def test_names_that_would_be_filter_syntax_are_refused(tracked, bundles, model_name) -> None:
    victim = model_name
    register(bundles.make(0.6), victim, runs_root=tracked.runs_root)
    register(bundles.make(0.7), victim, runs_root=tracked.runs_root)
    client = _client(tracked)
    for template in INJECTIONS:
        name = template.format(victim=victim)
        for uri in (f"models:/{name}/latest", f"models:/{name}/1", f"models:/{name}@champion"):
            with pytest.raises(RegistryError, match="not a valid model name"):
                parse_model_uri(uri)
            with pytest.raises(RegistryError, match="not a valid model name"):
                resolve_bundle(uri, runs_root=tracked.runs_root)
        with pytest.raises(RegistryError, match="not a valid model name"):
            register(bundles.alpha, name, runs_root=tracked.runs_root)
        with pytest.raises(RegistryError, match="not a valid model name"):
            promote(name, 1, runs_root=tracked.runs_root)
    # nothing was registered under a hostile name, and the victim still resolves as itself
    names = {m.name for m in client.search_registered_models(max_results=1000)}
    assert not any("'" in n or " " in n for n in names)
    latest = resolve_bundle(f"models:/{victim}/latest", runs_root=tracked.runs_root)
    assert bundle_digest(latest) == client.get_model_version(victim, "2").tags[DIGEST_TAG]


def test_a_name_matching_another_model_through_the_filter_is_never_served(
        tracked, bundles, model_name) -> None:
    """Even a model created with a hostile name behind our back (MLflow accepts quotes) is
    refused by name, so its filter can never pick up another model's versions."""
    client = _client(tracked)
    victim = model_name
    register(bundles.make(0.65), victim, runs_root=tracked.runs_root)
    hostile = f"{victim}' AND name != 'zzz"
    client.create_registered_model(hostile)
    with pytest.raises(RegistryError, match="not a valid model name"):
        resolve_bundle(f"models:/{hostile}/latest", runs_root=tracked.runs_root)
