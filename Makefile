# Phalanx. `make test` is what CI runs; `make demo` runs the system locally.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
NEXTEST_VERSION ?= 0.9.151
export GOTOOLCHAIN := local

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Install the Rust tools the tests need (rustfmt, clippy, cargo-nextest)
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install cargo-nextest --version $(NEXTEST_VERSION) --locked

.PHONY: envtest
envtest: ## Build (or reuse) kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok
	@bash hack/envtest/build.sh --versions

.PHONY: fmt-check
fmt-check: tools
	$(CARGO) fmt --all -- --check

.PHONY: lint
lint: tools
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: build
build:
	$(CARGO) build --workspace --all-targets --locked

.PHONY: test
test: tools fmt-check lint build ## Everything CI runs: format, clippy, build, all tests against the real control plane
	PHALANX_ENVTEST_BIN="$$(bash hack/envtest/build.sh --versions)" && export PHALANX_ENVTEST_BIN && \
	  $(CARGO) nextest run --workspace --locked --no-fail-fast

.PHONY: bench-cluster
bench-cluster: ## Cluster benchmark: NODES kwok nodes x 8 GPUs, PODS single pods, GANGS 64-pod gangs
	$(CARGO) build --release -p phalanx-dra-driver
	PHALANX_ENVTEST_BIN="$$(bash hack/envtest/build.sh)" NODES=$(or $(NODES),1000) PODS=$(or $(PODS),5000) GANGS=$(or $(GANGS),10) \
	  $(CARGO) bench -p phalanx-scheduler --bench cluster

.PHONY: difftest
difftest: ## Compare the DRA allocator with upstream's (hack/difftest) on N generated scenarios: make difftest N=100000 [SEED=1]
	$(CARGO) run --release --locked -p phalanx-scheduler-core --example dra_difftest -- $(or $(N),10000) $(or $(SEED),1)

.PHONY: demo
demo: ## Run Phalanx locally on a fake GPU cluster (Ctrl-C stops it)
	@bash hack/demo.sh
