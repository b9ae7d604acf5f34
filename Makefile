# The two set-up commands of the README live here: `make demo` and `make test`.
# Both create .venv and install what they need on a fresh machine; re-runs are quick.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the exact versions the suite last passed with (pip itself included); pyproject.toml keeps
# open ranges for people who install the package, every install here takes this set
CONSTRAINTS := constraints.txt

.PHONY: demo test lint lint-deploy audit bench-scan system-deps services clean lock

# torch/torchvision are pinned to the CUDA wheels that lie on this machine's disk, so pip
# takes them without a download; the package's own ranges admit them.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip -c $(CONSTRAINTS)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[all,dev]"
	touch $(STAMP)

# Rewrite constraints.txt from what .venv holds now: run it after `make test` passed on a
# deliberately upgraded environment (README, "Two commands on a fresh machine"). It does not
# depend on the install step, which would first put the old pinned versions back.
lock:
	test -x $(BIN)/python || { echo "no $(VENV): run make test first" >&2; exit 1; }
	{ echo "# The tested set: written by \`make lock\` (pip freeze of .venv), installed by"; \
	  echo "# \`make test\` / \`make demo\` with -c. Do not edit by hand."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable --exclude visiondeck; \
	} > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

system-deps:
	bash scripts/install-system-deps.sh

# PostgreSQL and Redis for the integration tests: started when installed and down.
services:
	bash scripts/start-services.sh

demo: $(STAMP)
	$(BIN)/visiondeck demo --time 1m --serve

# the dependency audit fails the build on a known vulnerability or a package the answering
# service could not audit, and only warns (loudly) when the vulnerability service cannot be
# reached: see scripts/audit_deps.py
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
