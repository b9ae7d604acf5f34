"""`import visiondeck.audit` stays cheap: torch, Lightning and cleanlab load when an audit runs."""

from __future__ import annotations

from tests.factories import loaded_after_import


def test_importing_the_audit_package_imports_no_heavy_library() -> None:
    heavy = ["torch", "lightning", "cleanlab", "sklearn", "matplotlib"]
    assert loaded_after_import(["visiondeck.audit", "visiondeck.audit.relabelling"], heavy) == []


def test_its_lazy_names_are_the_real_objects() -> None:
    import visiondeck.audit as audit
    from visiondeck.audit.core import audit as run
    from visiondeck.audit.relabelling import relabel

    assert audit.audit is run and audit.relabel is relabel
