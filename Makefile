# federated-dp-llm — the README's two commands are `make demo` and `make test`.
# Every target does its own set-up: the virtualenv at .venv/, PostgreSQL for the ledger
# tests, and the local Kubernetes binaries (built from Go modules, cached per version in
# ~/.cache/federated-dp-llm/).

SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help demo test test-unit test-e2e test-realpods test-kind lint cluster-up cluster-down router-demo deps clean images

help:
	@echo "make demo         run the full demo on the local cluster (builds/reuses everything)"
	@echo "make test         lint + every test (unit, PostgreSQL, e2e on the local cluster)"
	@echo "make router-demo  three demo hospital nodes + the router on 127.0.0.1"
	@echo "make cluster-up   start the local control plane and print its kubeconfig path"
	@echo "                  (REAL_NODES=1 CLUSTER=NAME: plus one real node, docs/real-node.md)"
	@echo "make cluster-down stop it"
	@echo "make test-kind    run the e2e suite on a kind cluster (needs Docker; not on these machines)"
	@echo "make lint         ruff, mypy, import-linter"
	@echo "make test-unit    the fast tier (no cluster, no integration tests); make test-e2e the cluster tier"
	@echo "make test-realpods the product in real pods on a real kubelet node (root; part of make test)"
	@echo "make images       build the router and operator images (docs/images.md; make test builds them too)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

deps: $(STAMP)
	hack/ensure-deps.sh
	PY=$(abspath $(BIN)/python) hack/ensure-litellm.sh >/dev/null
	PY=$(abspath $(BIN)/python) hack/ensure-llama.sh >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --config .importlinter
	$(BIN)/mypy --strict $$(cat hack/mypy-strict.txt)

test: deps lint
	hack/cluster/build.sh >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	# the router's request path again on the loop `fdp-router serve` uses by default
	$(BIN)/python -m pytest tests/unit/router -m "not integration" --event-loop uvloop $(PYTEST_ARGS)

# The fast tier: no cluster, no slow integration tests (about a minute).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e and not integration" $(PYTEST_ARGS)

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -m "e2e and not realpods" $(PYTEST_ARGS)

# The product in real pods on a real kubelet node (docs/real-node.md): builds the images,
# brings up its own real-node cluster, removes it afterwards. Part of `make test`.
test-realpods: $(STAMP)
	$(BIN)/python -m pytest -m realpods $(PYTEST_ARGS)

# kind needs a Docker engine, which these machines do not have: this target is for users
# who do. The same e2e suite runs against whatever $KUBECONFIG points at.
KIND ?= kind
test-kind: $(STAMP)
	$(KIND) create cluster --name fdp-e2e --wait 120s
	$(KIND) get kubeconfig --name fdp-e2e > $(VENV)/kind-kubeconfig
	KUBECONFIG=$(abspath $(VENV)/kind-kubeconfig) FDP_USE_PATH_TOOLS=1 $(BIN)/python -m pytest -m e2e $(PYTEST_ARGS); \
	  rc=$$?; $(KIND) delete cluster --name fdp-e2e; exit $$rc

# Docker if it works, else a private dockerd and an mmdebstrap base image (docs/images.md).
images:
	hack/images/build.sh

# REAL_NODES=1 adds one real node (containerd + kubelet, kube-proxy, CoreDNS, metrics-server):
# docs/real-node.md. CLUSTER names the cluster (default fdp).
REAL_NODES ?= 0
CLUSTER ?=
cluster-up:
	@FDP_REAL_NODES=$(REAL_NODES) hack/cluster/up.sh $(CLUSTER)

cluster-down:
	@hack/cluster/down.sh $(CLUSTER)

router-demo: $(STAMP)
	$(BIN)/fdp-router standalone-demo

demo: deps
	$(BIN)/python hack/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
