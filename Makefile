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

.PHONY: difftest
difftest: ## Compare the DRA allocator with upstream's (hack/difftest) on N generated scenarios: make difftest N=100000 [SEED=1]
	$(CARGO) run --release --locked -p phalanx-scheduler-core --example dra_difftest -- $(or $(N),10000) $(or $(SEED),1)

.PHONY: demo
demo: ## Run Phalanx locally on a fake GPU cluster (not built yet)
	@echo "make demo will: build everything, start the local control plane from hack/envtest,"
	@echo "publish fake GPU nodes with phalanx-dra-driver (profile mode), run phalanx-scheduler,"
	@echo "apply deploy/examples/ and print where every pod landed and why pending ones wait."
	@echo "Not built yet: the scheduler (issue 6) and the driver (issue 3) come first."
	@exit 1
