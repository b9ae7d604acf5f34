# The two set-up commands of the README live here: `make demo` and `make test`.
# Both create .venv and install what they need on a fresh machine; re-runs are quick.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint lint-deploy audit bench-scan system-deps services clean

# torch/torchvision are pinned to the CUDA wheels that lie on this machine's disk, so pip
# takes them without a download; the package's own ranges admit them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

# PostgreSQL and Redis for the integration tests: started when installed and down.
services:
	bash scripts/start-services.sh

demo: $(STAMP)
	$(BIN)/visiondeck demo --serve

# the dependency audit fails the build on a known vulnerability, and only warns (loudly)
# when the vulnerability service cannot be reached: see scripts/audit_deps.py
test: $(STAMP) system-deps services
	$(BIN)/ruff check .
	$(BIN)/python scripts/audit_deps.py
	$(BIN)/python -m pytest

audit: $(STAMP)
	$(BIN)/python scripts/audit_deps.py

lint: $(STAMP)
	$(BIN)/ruff check .

# Dockerfiles, compose, Kubernetes, Terraform, CI workflow (no Docker needed)
lint-deploy: $(STAMP)
	bash deploy/lint.sh

bench-scan: $(STAMP) system-deps
	$(BIN)/python benchmarks/bench_scan.py

clean:
	rm -rf $(VENV) demo prepared .pytest_cache .ruff_cache
