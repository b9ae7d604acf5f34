"""`make test`'s dependency audit: pip-audit over the installed environment, read carefully.

pip-audit exits 1 both when it finds a vulnerability and when it cannot reach its service,
and when the service answers "not found" for a package it skips it and still says "No known
vulnerabilities found". This script tells the cases apart, and is strict wherever the
advisory database answers:

- exit 1, "VULNERABLE": a known vulnerability in an installed package (not in IGNORED);
- exit 1, "UNAUDITED": the service answered for our packages but could not audit some of
  them (not in UNAUDITABLE) - a package nobody checked is not a clean package;
- exit 0 with a loud WARNING: the service could not be reached, or audited none of our
  packages (a PyPI mirror without the per-version JSON API answers 404 for every one) -
  CI must not turn red for a network reason alone; VISIONDECK_AUDIT_STRICT=1 makes it fail;
- exit 0, "clean": every installed package was audited and is free of known
  vulnerabilities.

The vulnerability data is PyPI's (pip-audit's default service, `--vulnerability-service
pypi`); VISIONDECK_AUDIT_SERVICE=osv uses osv.dev instead. The editable visiondeck itself is
skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# Vulnerability IDs we accept knowingly, each with the reason. torch/torchvision are pinned
# (2.14.1/0.29.1, the wheels on the build machines): a finding there goes here with its ID
# and why it does not apply (e.g. torch.load is only called with weights_only=True).
IGNORED: dict[str, str] = {}
# Installed packages the service cannot know (e.g. built locally, not on PyPI), each with the
# reason it is accepted unaudited; any other package the service skips fails the audit.
UNAUDITABLE: dict[str, str] = {}


@dataclass
class Verdict:
    status: str  # "vulnerable" | "unaudited" | "unreachable" | "clean"
    vulnerable: list[dict] = field(default_factory=list)
    audited: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    reason: str = ""
    #: skipped packages not accepted in UNAUDITABLE, with the service's reason
    unaudited: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.status in ("vulnerable", "unaudited"):
            return 1
        if self.status == "unreachable" and os.environ.get("VISIONDECK_AUDIT_STRICT") == "1":
            return 2
        return 0


def classify(report: dict | None, returncode: int, stderr: str = "") -> Verdict:
    """The verdict from pip-audit's JSON report (None when it wrote none) and exit code."""
    if report is None or not isinstance(report.get("dependencies"), list):
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip-audit exited {returncode} without a report"
        return Verdict("unreachable", reason=reason)
    deps = report["dependencies"]
    vulnerable = [d for d in deps if d.get("vulns")]
    audited = [d["name"] for d in deps if "skip_reason" not in d]
    skipped = [d["name"] for d in deps if "skip_reason" in d and d["name"] != "visiondeck"]
    if not audited and not vulnerable:
        example = next((d["skip_reason"] for d in deps if "skip_reason" in d
                        and d["name"] != "visiondeck"), "no packages")
        return Verdict("unreachable", [], audited, skipped,
                       f"the service audited none of {len(skipped)} packages ({example})")
    # the service answers: from here on every package must be audited and clean
    unaudited = {d["name"]: str(d["skip_reason"]) for d in deps if "skip_reason" in d
                 and d["name"] != "visiondeck" and d["name"] not in UNAUDITABLE}
    if vulnerable:
        return Verdict("vulnerable", vulnerable, audited, skipped, unaudited=unaudited)
    if unaudited:
        return Verdict("unaudited", [], audited, skipped,
                       f"{len(unaudited)} installed package(s) could not be audited",
                       unaudited)
    return Verdict("clean", [], audited, skipped)


def run_audit(service: str = "pypi", timeout_s: float = 900) -> Verdict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        command = [sys.executable, "-m", "pip_audit", "--progress-spinner", "off",
                   "--skip-editable", "--vulnerability-service", service,
                   "--format", "json", "--output", str(out)]
        for vuln_id in IGNORED:
            command += ["--ignore-vuln", vuln_id]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            return Verdict("unreachable", reason=f"pip-audit took over {timeout_s:.0f} s")
        except OSError as exc:
            return Verdict("unreachable", reason=f"pip-audit could not run: {exc}")
        report = None
        if out.is_file() and out.stat().st_size:
            try:
                report = json.loads(out.read_text(encoding="utf-8"))
            except ValueError:
                report = None
        if report is None and "No module named pip_audit" in done.stderr:
            return Verdict("unreachable", reason="pip-audit is not installed "
                                                 "(pip install -e '.[dev]')")
        return classify(report, done.returncode, done.stderr)


def main() -> int:
    service = os.environ.get("VISIONDECK_AUDIT_SERVICE", "pypi")
    verdict = run_audit(service)
    if verdict.status == "vulnerable":
        print("VULNERABLE: known vulnerabilities in installed packages:", file=sys.stderr)
        for dep in verdict.vulnerable:
            for vuln in dep["vulns"]:
                fixed = ", ".join(vuln.get("fix_versions") or []) or "no fix released"
                print(f"  {dep['name']} {dep.get('version', '')}: {vuln.get('id')} "
                      f"(fixed in: {fixed})", file=sys.stderr)
        print("raise the minimum version in pyproject.toml (and `make lock`), or list the ID "
              "in scripts/audit_deps.py IGNORED with the reason it does not apply",
              file=sys.stderr)
    if verdict.unaudited:
        print(f"UNAUDITED: the vulnerability service ({service}) answered but could not audit "
              "these installed packages:", file=sys.stderr)
        for name, why in sorted(verdict.unaudited.items()):
            print(f"  {name}: {why}", file=sys.stderr)
        print("install a release the service knows, or list the package in "
              "scripts/audit_deps.py UNAUDITABLE with the reason it is accepted unchecked",
              file=sys.stderr)
    if verdict.status == "unreachable":
        bar = "!" * 78
        print(f"{bar}\nWARNING: dependency audit NOT done - the vulnerability service "
              f"({service}) could not be used:\n  {verdict.reason}\nNo package was checked. "
              f"Run `make audit` where the service is reachable.\n{bar}", file=sys.stderr)
    elif verdict.status == "clean":
        note = (f"; {len(verdict.skipped)} accepted unaudited (UNAUDITABLE)"
                if verdict.skipped else "")
        print(f"dependency audit ({service}): {len(verdict.audited)} packages, no known "
              f"vulnerabilities{note}")
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
