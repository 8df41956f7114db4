# One entry point for people and CI. `make test` sets everything up from nothing
# (Debian packages, virtualenv, cached test-bed binaries) and runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: test unit setup testbed-binaries demo venv system-deps lint format typecheck imports \
	train clean crd dashboard chart-schema chart-readme

# The suite runs in lanes, two side by side (scripts/test-lanes.sh says why); with
# PYTEST_ARGS (a selection) it is one plain pytest run.
test: setup lint typecheck imports
	BIN=$(BIN) bash scripts/test-lanes.sh $(PYTEST_ARGS)

# The fast loop: lint, types, layers and the tests that need no control plane, no Prometheus
# and no multi-process torch (under a minute; the dashboard tests parse queries with promtool,
# from the Debian packages).
unit: system-deps venv testbed-binaries lint typecheck imports
	BIN=$(BIN) bash scripts/test-lanes.sh --unit $(PYTEST_ARGS)

setup: system-deps venv testbed-binaries

# kube-apiserver, scheduler, controller-manager, kubectl, etcd, kwok and helm built from Go
# modules, and a Prometheus with Kubernetes discovery (Debian's has none) from its Go module;
# cached under ~/.cache/trainscale (a warm cache returns at once).
testbed-binaries: venv
	bash scripts/testbed/build.sh
	$(BIN)/python -c 'from trainscale.testbed.prometheus import fetch_prometheus_with_kubernetes_sd as f; print(f())'

system-deps:
	bash scripts/install-system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml tools/testbed/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[trainer,dev,hf,lightning]' -e tools/testbed
	touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: venv
	$(BIN)/mypy

imports: venv
	$(BIN)/lint-imports

crd: venv
	$(BIN)/trainscale crd --output manifests/crd/trainingjobs.trainscale.dev.yaml

dashboard: venv
	$(BIN)/trainscale dashboard --output charts/trainscale/dashboards/trainscale.json

chart-schema: venv
	$(BIN)/python -m trainscale.testbed.chart_values --output charts/trainscale/values.schema.json

chart-readme: venv
	$(BIN)/python -m trainscale.testbed.chart_readme --output charts/trainscale/README.md

# The main job, the whole loop: the operator autoscaling a job whose workers really train on a
# process node of the local control plane (needs root).
demo: setup
	bash scripts/demo.sh

# Elastic training on a real dataset with two local workers.
train: setup
	$(BIN)/trainscale-train --local --workers 2 --task trainscale.trainer.examples.digits:task

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache
	find . -name '*.egg-info' -prune -exec rm -rf {} +
