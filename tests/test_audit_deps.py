"""scripts/audit_deps.py: a vulnerability or a package the answering service could not audit
fails the build; an unusable service only warns."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "audit_deps.py"


@pytest.fixture(scope="module")
def audit():
    spec = importlib.util.spec_from_file_location("audit_deps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["audit_deps"] = module
    spec.loader.exec_module(module)
    return module


def test_a_known_vulnerability_fails(audit, monkeypatch) -> None:
    report = {"dependencies": [
        {"name": "jinja2", "version": "3.1.2", "vulns": [
            {"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"], "aliases": []}]},
        {"name": "numpy", "version": "2.0.0", "vulns": []},
        {"name": "odd", "skip_reason": "Dependency not found on PyPI"}], "fixes": []}
    verdict = audit.classify(report, 1)
    assert verdict.status == "vulnerable" and verdict.exit_code == 1
    assert [d["name"] for d in verdict.vulnerable] == ["jinja2"]
    assert verdict.audited == ["jinja2", "numpy"] and verdict.skipped == ["odd"]


def test_an_unreachable_service_warns_unless_strict(audit, monkeypatch) -> None:
    stderr = ("Traceback (most recent call last):\n  ...\nrequests.exceptions.ConnectionError:"
              " Failed to resolve 'api.osv.dev'\n")
    verdict = audit.classify(None, 1, stderr)
    assert verdict.status == "unreachable" and verdict.exit_code == 0
    assert "Failed to resolve" in verdict.reason
    monkeypatch.setenv("VISIONDECK_AUDIT_STRICT", "1")
    assert verdict.exit_code == 2


def test_a_service_that_knows_none_of_our_packages_is_not_a_clean_audit(audit) -> None:
    # what a PyPI mirror without the per-version JSON API gives: every package "not found"
    report = {"dependencies": [
        {"name": "numpy", "skip_reason": "Dependency not found on PyPI and could not be "
                                         "audited: numpy (2.0.0)"},
        {"name": "visiondeck", "skip_reason": "distribution marked as editable"}]}
    verdict = audit.classify(report, 0)
    assert verdict.status == "unreachable" and "none of 1 packages" in verdict.reason
    assert verdict.exit_code == 0


def test_a_clean_audit(audit) -> None:
    report = {"dependencies": [{"name": "numpy", "version": "2.0.0", "vulns": []},
                               {"name": "visiondeck", "skip_reason": "distribution marked "
                                                                     "as editable"}]}
    verdict = audit.classify(report, 0)
    assert verdict.status == "clean" and verdict.exit_code == 0
    assert verdict.audited == ["numpy"] and verdict.skipped == []


def test_an_unauditable_package_fails_where_the_service_answers(audit, monkeypatch) -> None:
    report = {"dependencies": [{"name": "numpy", "version": "2.0.0", "vulns": []},
                               {"name": "local", "skip_reason": "Dependency not found on "
                                                                "PyPI and could not be audited"}]}
    verdict = audit.classify(report, 0)
    assert verdict.status == "unaudited" and verdict.exit_code == 1
    assert verdict.unaudited == {"local": "Dependency not found on PyPI and could not be "
                                          "audited"}
    # knowingly accepted, with its reason: the audit passes and says so
    monkeypatch.setattr(audit, "UNAUDITABLE", {"local": "built here, not published"})
    accepted = audit.classify(report, 0)
    assert accepted.status == "clean" and accepted.exit_code == 0
    assert accepted.skipped == ["local"]


def test_a_vulnerability_beside_an_unaudited_package_names_both(audit, capsys,
                                                                monkeypatch) -> None:
    report = {"dependencies": [
        {"name": "jinja2", "version": "3.1.2", "vulns": [
            {"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.3"], "aliases": []}]},
        {"name": "local", "skip_reason": "not on PyPI"}]}
    monkeypatch.setattr(audit, "run_audit", lambda service: audit.classify(report, 1))
    assert audit.main() == 1
    err = capsys.readouterr().err
    assert "VULNERABLE" in err and "GHSA-h5c8-rqwp-cp95" in err
    assert "UNAUDITED" in err and "local: not on PyPI" in err


def test_ignored_ids_are_passed_to_pip_audit(audit, monkeypatch) -> None:
    seen: list[list[str]] = []

    def fake_run(command, **kwargs):
        seen.append(command)
        raise OSError("no such program")

    monkeypatch.setattr(audit, "IGNORED", {"PYSEC-0000-1": "does not apply: test"})
    monkeypatch.setattr(audit.subprocess, "run", fake_run)
    verdict = audit.run_audit()
    assert verdict.status == "unreachable" and "could not run" in verdict.reason
    command = seen[0]
    assert command[command.index("--ignore-vuln") + 1] == "PYSEC-0000-1"
    assert command[command.index("--vulnerability-service") + 1] == "pypi"
