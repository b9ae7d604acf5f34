"""The deployment recipes, checked with what runs without Docker, Kubernetes or AWS.

Docker cannot run on the machines this project is built on, so no image is built here and
no container started. What is checked: hadolint on both Dockerfiles, the compose file and
the CI workflow against their JSON schemas (check-jsonschema's vendored compose-spec and
GitHub workflow schemas), the Kubernetes manifests against the API's schemas
(kubernetes-validate --strict), Terraform parsed (python-hcl2) with its references
resolved, and `terraform validate` where terraform and an AWS provider mirror are present.
On top: the facts that tie the recipes to the code - probes on /ready and /health, every
VISIONDECK_* variable a real ServeSettings field (a renamed setting breaks this test), every
COPY source present, healthchecks everywhere, CI running what .ci/run runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
MANIFESTS = ["configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
TF_PLUGINS = Path(os.environ.get("TF_PLUGIN_DIR", "/opt/tf-plugins"))
# read by other parts than ServeSettings (each checked against the code that reads it)
OTHER_SETTINGS = {"VISIONDECK_MODEL_CACHE": "src/visiondeck/registry/resolve.py",
                  "VISIONDECK_BUNDLE_S3": "deploy/lambda/handler.py"}


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing: it comes with `pip install -e .[dev]`"
    return str(path)


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def serve_fields() -> set[str]:
    from visiondeck.serve.settings import ServeSettings

    return {f"VISIONDECK_{name.upper()}" for name in ServeSettings.model_fields}


def check_setting_names(names: set[str], where: str) -> None:
    fields = serve_fields()
    for name in sorted(n for n in names if n.startswith("VISIONDECK_")):
        if name in OTHER_SETTINGS:
            assert name in (ROOT / OTHER_SETTINGS[name]).read_text(), name
        else:
            assert name in fields, f"{where}: {name} is not a ServeSettings field"


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ------------------------------------------------------------------------------ Docker


def dockerfile_stages(text: str) -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def test_hadolint_passes_both_dockerfiles() -> None:
    done = run(tool("hadolint"), "deploy/Dockerfile", "deploy/lambda/Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_not_a_no_op(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install numpy\n")
    done = run(tool("hadolint"), str(bad))
    assert done.returncode != 0 and "DL3007" in done.stdout  # :latest


def test_serve_stage_is_slim_unprivileged_and_reachable() -> None:
    stages = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    assert {"base", "build", "serve", "train", "mlflow"} <= set(stages)
    env_stage = " ".join(stages["serve-env"])
    assert "ARG SERVE_EXTRAS=serve " in env_stage + " "
    assert "[${SERVE_EXTRAS}]" in env_stage
    serve = "\n".join(stages["serve"])
    assert re.search(r"^USER 10001:10001$", serve, re.M)  # numeric: runAsNonRoot can check it
    assert "VISIONDECK_HOST=0.0.0.0" in serve  # the app binds 127.0.0.1 by default
    assert re.search(r"HEALTHCHECK .*127\.0\.0\.1:8000/health", serve)
    assert re.search(r'ENTRYPOINT \["visiondeck", "serve", "--host", "0.0.0.0"', serve)
    train = " ".join(stages["train"])
    assert "download.pytorch.org/whl/cpu" in train and "[all]" in train


def test_serve_and_lambda_extras_never_pull_torch() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    heavy = re.compile(r"^(torch|torchvision|lightning|timm|mlflow|grad-cam)\b", re.I)
    for extra in ("serve", "lambda"):
        assert extras[extra], extra
        assert not [r for r in extras[extra] if heavy.match(r)], extra
        assert any(r.startswith("onnxruntime") for r in extras[extra])
    # and the ENV/ARG settings of the images are real settings
    names = set(re.findall(r"\b(VISIONDECK_[A-Z0-9_]+)=", (DEPLOY / "Dockerfile").read_text()))
    assert names
    check_setting_names(names, "deploy/Dockerfile")


@pytest.mark.parametrize("dockerfile", ["deploy/Dockerfile", "deploy/lambda/Dockerfile"])
def test_every_copy_source_exists(dockerfile: str) -> None:
    text = re.sub(r"\\\n\s*", " ", (ROOT / dockerfile).read_text())
    ignored = (ROOT / ".dockerignore").read_text().split()
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M)
    assert copies
    for line in copies:
        if line.startswith("["):
            continue
        *sources, _target = line.split()
        for source in sources:
            if "${" in source:  # a build argument (the baked Bundle): chosen by the user
                continue
            assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"
            assert source.split("/")[0] not in ignored, f"{source} is in .dockerignore"


# ----------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_spec() -> None:
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               "deploy/compose.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_schema_check_is_not_a_no_op(tmp_path: Path) -> None:
    broken = (DEPLOY / "compose.yaml").read_text().replace("healthcheck:", "healthchek:", 1)
    (tmp_path / "compose.yaml").write_text(broken)
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
               str(tmp_path / "compose.yaml"))
    assert done.returncode != 0


def test_compose_services_are_healthy_and_wired() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"api", "mlflow", "postgres", "redis", "s3"} <= set(services)
    stages = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        tool_only = bool(service.get("profiles"))
        if not (one_shot or tool_only):
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for needed, condition in (service.get("depends_on") or {}).items():
            assert needed in services, f"{name} depends on unknown {needed}"
            expected = ("service_completed_successfully" if services[needed].get("restart")
                        == "no" else "service_healthy")
            assert condition["condition"] == expected, (name, needed)
        build = service.get("build")
        if isinstance(build, dict):
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
            assert build["target"] in stages, f"{name}: no stage {build['target']}"
    api = services["api"]
    assert "/ready" in " ".join(api["healthcheck"]["test"])
    env = api["environment"]
    assert env["VISIONDECK_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["VISIONDECK_DATABASE_URL"].endswith("@postgres:5432/visiondeck")
    assert env["VISIONDECK_REDIS_URL"].startswith("redis://redis:6379")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    mlflow = " ".join(services["mlflow"]["command"])
    assert "@postgres:5432/mlflow" in mlflow and "--artifacts-destination=s3://mlflow/" in mlflow
    assert "CREATE DATABASE mlflow" in compose["configs"]["postgres-init"]["content"]
    names = set()
    for service in services.values():
        names |= set(service.get("environment") or {})
    check_setting_names(names, "deploy/compose.yaml")


# ------------------------------------------------------------------ secrets (compose, k8s)

#: names that hold a secret (passwords, secrets, keys, tokens)
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY(_ID)?$", re.I)
#: names whose value carries a secret inside (a database URL with its password)
SECRET_BEARING = {"VISIONDECK_DATABASE_URL", "VISIONDECK_JWT_SECRET", "VISIONDECK_LABEL_SECRET"}
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?[^}]*\}")
REQUIRED = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")
URL_PASSWORD = re.compile(r"://[^/\s:@]*:([^@\s]+)@")


def secret_problems_in_compose(text: str) -> list[str]:
    """Every way compose.yaml could start with a secret nobody chose: a `${SECRET}` with a
    default (or none, so empty), a secret setting with a literal value, a URL with a
    literal password."""
    problems = [f"${{{name}}} is not required (write ${{{name}:?...}})"
                for name, operator in INTERPOLATION.findall(text)
                if SECRET_NAME.search(name) and operator != ":?"]
    problems += [f"a URL with a literal password: {password}"
                 for password in URL_PASSWORD.findall(text) if not REQUIRED.match(password)]
    compose = yaml.safe_load(text)
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if (SECRET_NAME.search(key) or key in SECRET_BEARING) and not (
                    isinstance(value, str) and INTERPOLATION.search(value)):
                problems.append(f"{name}: {key} has a literal value")
    return problems


def test_compose_secrets_have_no_defaults() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert secret_problems_in_compose(text) == []
    required = {name for name, operator in INTERPOLATION.findall(text) if operator == ":?"}
    assert {"POSTGRES_PASSWORD", "VISIONDECK_LABEL_SECRET", "S3_ACCESS_KEY",
            "S3_SECRET_KEY"} <= required


@pytest.mark.parametrize(("before", "after"), [
    ("${VISIONDECK_LABEL_SECRET:?", "${VISIONDECK_LABEL_SECRET:-change-me-"),
    ("${POSTGRES_PASSWORD:?", "${POSTGRES_PASSWORD-visiondeck"),
    ("${S3_SECRET_KEY:?see deploy/README.md}", "${S3_SECRET_KEY}"),
    ("visiondeck:${POSTGRES_PASSWORD:?see deploy/README.md}@postgres:5432/visiondeck",
     "visiondeck:visiondeck@postgres:5432/visiondeck"),
])
def test_compose_secret_check_is_not_a_no_op(before: str, after: str) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert before in text
    assert secret_problems_in_compose(text.replace(before, after, 1))


def secret_problems_in_k8s(docs: list[dict]) -> list[str]:
    """Secrets reach pods only through a Secret the operator creates: no Secret object with
    data in the repository, no literal or optional secret in a container's env, none in
    a ConfigMap."""
    problems = []
    for doc in docs:
        kind = doc["kind"]
        if kind == "Secret":
            problems.append(f"a Secret in the manifests: {doc['metadata']['name']}")
        if kind == "ConfigMap":
            for key, value in (doc.get("data") or {}).items():
                if SECRET_NAME.search(key) or key in SECRET_BEARING:
                    problems.append(f"ConfigMap {key}: a secret in plain configuration")
                if URL_PASSWORD.search(str(value)):
                    problems.append(f"ConfigMap {key}: a URL with a password")
        if kind == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for entry in container.get("env", []):
                    name = entry["name"]
                    if not (SECRET_NAME.search(name) or name in SECRET_BEARING):
                        continue
                    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                    if "value" in entry or ref is None:
                        problems.append(f"env {name}: not from a Secret")
                    elif ref.get("optional"):
                        problems.append(f"env {name}: an optional Secret (absent = unset)")
    return problems


def test_kubernetes_secrets_come_from_a_secret() -> None:
    docs = [doc for name in MANIFESTS for doc in load_yaml_documents(DEPLOY / "k8s" / name)]
    assert secret_problems_in_k8s(docs) == []
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    from_secret = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert {"VISIONDECK_DATABASE_URL", "VISIONDECK_LABEL_SECRET"} <= from_secret
    # and the check sees a literal, an optional Secret and a password in the ConfigMap
    label = next(e for e in container["env"] if e["name"] == "VISIONDECK_LABEL_SECRET")
    literal = dict(label, value="change-me-to-a-long-random-string")
    literal.pop("valueFrom")
    optional = {**label, "valueFrom": {"secretKeyRef": {
        **label["valueFrom"]["secretKeyRef"], "optional": True}}}
    for bad in (literal, optional):
        container["env"] = [bad if e is label else e for e in container["env"]]
        assert secret_problems_in_k8s(docs), bad
    leaky = {"kind": "ConfigMap", "data": {"VISIONDECK_REDIS_URL": "redis://:hunter2@r:6379"}}
    assert secret_problems_in_k8s([leaky])


# -------------------------------------------------------------------------- Kubernetes


def test_kubernetes_manifests_validate_strictly() -> None:
    files = [str(DEPLOY / "k8s" / name) for name in MANIFESTS]
    for version in ("1.29.0", None):
        extra = ["-k", version] if version else []
        done = run(tool("kubernetes-validate"), "--strict", "--quiet", *extra, *files)
        assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validation_is_not_a_no_op(tmp_path: Path) -> None:
    text = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    (tmp_path / "d.yaml").write_text(text.replace("readinessProbe", "readinesProbe"))
    done = run(tool("kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "d.yaml"))
    assert done.returncode != 0


def test_kubernetes_probes_scaling_and_settings() -> None:
    k8s = DEPLOY / "k8s"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    docs = {doc["kind"]: doc for name in MANIFESTS for doc in load_yaml_documents(k8s / name)}
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    config = docs["ConfigMap"]["data"]
    assert {config["VISIONDECK_DATA_DIR"], config["VISIONDECK_MODEL_CACHE"], "/tmp"} <= mounts
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    assert 1 < hpa["minReplicas"] < hpa["maxReplicas"]
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation needs it
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"][
        "name"]
    names = set(config) | {e["name"] for e in container["env"]}
    check_setting_names(names, "deploy/k8s")


# --------------------------------------------------------------------------- Terraform


def terraform_files() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((DEPLOY / "terraform").glob("*.tf"))}


def unquote(key: str) -> str:
    return key.strip('"')


def test_terraform_parses_and_every_reference_resolves() -> None:
    import hcl2

    variables, resources, data, local_names = set(), set(), set(), set()
    for text in terraform_files().values():
        parsed = hcl2.loads(text)
        for block in parsed.get("variable", []):
            variables |= {unquote(k) for k in block}
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                resources |= {f"{unquote(kind)}.{unquote(n)}" for n in named}
        for block in parsed.get("data", []):
            for kind, named in block.items():
                data |= {f"{unquote(kind)}.{unquote(n)}" for n in named}
        for block in parsed.get("locals", []):
            local_names |= {k for k in block if not k.startswith("__")}
    text = "\n".join(terraform_files().values())
    code = re.sub(r"#.*", "", text)
    used_vars = set(re.findall(r"\bvar\.([a-z0-9_]+)", code))
    assert used_vars <= variables, used_vars - variables
    assert variables <= used_vars, f"declared but unused: {variables - used_vars}"
    assert set(re.findall(r"\blocal\.([a-z0-9_]+)", code)) <= local_names
    used_data = {f"{k}.{n}" for k, n in re.findall(r"\bdata\.(aws_[a-z0-9_]+)\.([a-z0-9_]+)",
                                                     code)}
    assert used_data and used_data <= data
    used = {f"{k}.{n}" for k, n in re.findall(r"(?<![.\w])(aws_[a-z0-9_]+)\.([a-z0-9_]+)",
                                               code)}
    assert used <= resources, used - resources
    expected = {"aws_lambda_function.predict", "aws_apigatewayv2_api.http",
                "aws_s3_bucket.bundles", "aws_iam_role.predict", "aws_lambda_permission.api"}
    assert expected <= resources


def test_terraform_least_privilege_and_handler_contract() -> None:
    text = "\n".join(terraform_files().values())
    actions = re.findall(r"actions\s*=\s*\[([^\]]*)\]", text)
    assert actions
    for group in actions:
        assert "*" not in group, f"wildcard action: {group}"
    assert re.search(r'actions\s*=\s*\["s3:GetObject"\]', text)  # read the Bundle, no more
    assert 'payload_format_version = "2.0"' in text  # the handler reads v2 events
    routes = set(re.findall(r'route_key\s*=\s*"([^"]+)"', text))
    assert {"POST /predict", "GET /health"} <= routes
    handler = (DEPLOY / "lambda" / "handler.py").read_text()
    env_block = re.search(r"variables\s*=\s*\{(.*?)\n    \}", text, re.S).group(1)
    names = set(re.findall(r"\b(VISIONDECK_[A-Z0-9_]+)\s*=", env_block))
    assert "VISIONDECK_BUNDLE_S3" in names
    for name in names:
        assert f'"{name}"' in handler, f"the handler does not read {name}"


def test_terraform_validate(tmp_path: Path) -> None:
    """This project's machines carry terraform and an AWS provider mirror (TF_PLUGIN_DIR,
    default /opt/tf-plugins); neither comes from PyPI or Debian, so where they are missing
    the check fails and says so rather than skip and leave deploy/terraform unvalidated."""
    assert shutil.which("terraform"), "terraform is not on PATH: install it to run this check"
    assert (TF_PLUGINS / "registry.terraform.io/hashicorp/aws").is_dir(), (
        f"no AWS provider under {TF_PLUGINS}: set TF_PLUGIN_DIR to a provider mirror "
        "(`terraform providers mirror DIR` on a connected machine)")
    for path in (DEPLOY / "terraform").glob("*.tf"):
        shutil.copy(path, tmp_path / path.name)
    fmt = run("terraform", "fmt", "-check", "-diff", "-no-color", str(DEPLOY / "terraform"))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    init = run("terraform", f"-chdir={tmp_path}", "init", "-backend=false", "-input=false",
               "-no-color", f"-plugin-dir={TF_PLUGINS}")
    assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
    done = run("terraform", f"-chdir={tmp_path}", "validate", "-no-color")
    assert done.returncode == 0 and "The configuration is valid" in done.stdout, (
        done.stdout + done.stderr)


# ---------------------------------------------------------------------------------- CI


def test_ci_workflow_runs_what_ci_run_runs() -> None:
    done = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
               ".github/workflows/ci.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    [job] = workflow["jobs"].values()
    commands = [step["run"].strip() for step in job["steps"] if "run" in step]
    assert commands == ["make test"]
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)
    services = job["services"]
    assert services["postgres"]["ports"] == ["5432:5432"]
    assert services["redis"]["ports"] == ["6379:6379"]
    env = services["postgres"]["env"]
    # what tests/servers.py connects to: postgresql://postgres@127.0.0.1:5432/test, trust
    from tests.servers import DEFAULT_POSTGRES

    assert DEFAULT_POSTGRES == "postgresql://postgres@127.0.0.1:5432/test"
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"], env["POSTGRES_HOST_AUTH_METHOD"]) == (
        "postgres", "test", "trust")
    assert job["timeout-minutes"] <= 90


def test_lint_script_is_valid_shell() -> None:
    done = run("bash", "-n", "deploy/lint.sh")
    assert done.returncode == 0, done.stderr
    assert shutil.which("shellcheck"), "shellcheck missing: scripts/install-system-deps.sh"
    done = run("shellcheck", "deploy/lint.sh")
    assert done.returncode == 0, done.stdout
