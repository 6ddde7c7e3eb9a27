# Phalanx. `make test` is what CI runs; `make demo` runs the system locally.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
NEXTEST_VERSION ?= 0.9.151
# Kubernetes 1.37 is built with Go 1.27: the go command fetches this toolchain from the
# Go module proxy (a fresh machine has Go 1.26, which ignores a go.mod toolchain line).
export GOTOOLCHAIN=go1.27.3
# The Kubernetes version the tests run against: 1.37 (default) or 1.36.
PHALANX_K8S ?= 1.37
export PHALANX_K8S
# The tests that `make test-compat` runs on the other supported version: the scheduler's
# end-to-end tests and the driver's tests against the apiserver.
COMPAT_TESTS ?= -p phalanx-scheduler --test e2e --test workload --test commit --test crash -p phalanx-dra-driver --test publisher --test admission -p phalanx-tests --test smoke --test real_nodes

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Install the Rust tools the tests need (rustfmt, clippy, cargo-nextest)
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install cargo-nextest --version $(NEXTEST_VERSION) --locked

.PHONY: envtest
envtest: ## Build (or reuse) the control plane of PHALANX_K8S (1.37 default): kube-apiserver, -controller-manager, -scheduler, kubectl, etcd, kwok
	@bash hack/envtest/build.sh --versions

.PHONY: node-binaries
node-binaries: ## Build (or reuse) what real test nodes run: the kubelet, containerd + runc shim, runc, crictl, CNI plugins
	@bash hack/envtest/build.sh kubelet >/dev/null
	@bash hack/node/build.sh --versions

.PHONY: images
images: ## Build the images as OCI archives without Docker: pause + testbox (cached), and phalanx-scheduler, -dra-driver, -worker (static musl) into target/images
	@bash hack/images/build.sh base >/dev/null
	@bash hack/images/build.sh phalanx

.PHONY: manifests
manifests: ## Render the plain manifests in deploy/ from the Helm chart (deploy/helm/phalanx)
	@bash hack/manifests.sh

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
test: tools fmt-check lint build ## Everything CI runs: format, clippy, build, all tests against the real control plane (kwok and real nodes)
	PHALANX_ENVTEST_BIN="$$(bash hack/envtest/build.sh kubelet --versions)" && export PHALANX_ENVTEST_BIN && \
	  PHALANX_NODE_BIN="$$(bash hack/node/build.sh --versions)" && export PHALANX_NODE_BIN && \
	  PHALANX_IMAGES="$$(bash hack/images/build.sh base)" && export PHALANX_IMAGES && \
	  PHALANX_APP_IMAGES="$$(bash hack/images/build.sh phalanx)" && export PHALANX_APP_IMAGES && \
	  PHALANX_HELM="$$(bash hack/helm/build.sh)" && export PHALANX_HELM && \
	  $(CARGO) nextest run --workspace --locked --no-fail-fast

.PHONY: test-compat
test-compat: tools ## The end-to-end scheduler tests, the driver's apiserver tests and the real-node tests on Kubernetes 1.36
	PHALANX_K8S=1.36 && export PHALANX_K8S && \
	  PHALANX_ENVTEST_BIN="$$(bash hack/envtest/build.sh kubelet --versions)" && export PHALANX_ENVTEST_BIN && \
	  PHALANX_NODE_BIN="$$(bash hack/node/build.sh)" && export PHALANX_NODE_BIN && \
	  PHALANX_IMAGES="$$(bash hack/images/build.sh base)" && export PHALANX_IMAGES && \
	  PHALANX_APP_IMAGES="$$(bash hack/images/build.sh phalanx)" && export PHALANX_APP_IMAGES && \
	  PHALANX_HELM="$$(bash hack/helm/build.sh)" && export PHALANX_HELM && \
	  $(CARGO) nextest run --locked --no-fail-fast $(COMPAT_TESTS)

.PHONY: bench-cluster
bench-cluster: ## Cluster benchmark: NODES kwok nodes x 8 GPUs, PODS single pods, GANGS 64-pod gangs
	$(CARGO) build --release -p phalanx-dra-driver
	PHALANX_ENVTEST_BIN="$$(bash hack/envtest/build.sh)" NODES=$(or $(NODES),1000) PODS=$(or $(PODS),5000) GANGS=$(or $(GANGS),10) \
	  $(CARGO) bench -p phalanx-scheduler --bench cluster

.PHONY: difftest
difftest: ## Compare the DRA allocator with upstream's of Kubernetes K8S (1.37, or 1.36) on N scenarios: make difftest N=100000 [SEED=1] [K8S=1.36]
	$(CARGO) run --release --locked -p phalanx-scheduler-core --example dra_difftest -- --k8s $(or $(K8S),1.37) $(or $(N),10000) $(or $(SEED),1)

.PHONY: demo
demo: ## Run Phalanx locally on a fake GPU cluster (Ctrl-C stops it)
	@bash hack/demo.sh
