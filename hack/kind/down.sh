#!/usr/bin/env bash
# Deletes the kind cluster of hack/kind/up.sh (and everything in it).
set -euo pipefail
kind delete cluster --name "${KIND_CLUSTER_NAME:-phalanx}"
