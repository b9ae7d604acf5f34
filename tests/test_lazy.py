"""The packages' lazy public names (visiondeck._lazy): cheap imports, real objects on use."""

from __future__ import annotations

import pytest

from tests.factories import loaded_after_import

PACKAGES = ["visiondeck", "visiondeck.data", "visiondeck.models", "visiondeck.train",
            "visiondeck.evaluate", "visiondeck.explain", "visiondeck.export",
            "visiondeck.registry", "visiondeck.serve", "visiondeck.monitor",
            "visiondeck.pipeline"]
HEAVY = ["torch", "lightning", "timm", "mlflow", "onnxruntime", "pytorch_grad_cam"]


def test_importing_every_package_imports_no_heavy_library() -> None:
    assert loaded_after_import(PACKAGES, HEAVY) == []


def test_a_lazy_name_is_the_real_object_and_is_cached() -> None:
    import visiondeck.export as export
    from visiondeck.export.bundle import load_bundle

    assert export.load_bundle is load_bundle
    assert "load_bundle" in vars(export)  # resolved once, then a plain attribute
    assert "load_bundle" in dir(export)


def test_relative_names_resolve_inside_the_package() -> None:
    import visiondeck.evaluate as evaluate
    from visiondeck.evaluate.core import evaluate_run

    assert evaluate.evaluate_run is evaluate_run


def test_an_unknown_name_is_an_attribute_error() -> None:
    import visiondeck.export as export

    with pytest.raises(AttributeError, match=r"visiondeck\.export.*no_such_thing"):
        export.no_such_thing  # noqa: B018
