#!/usr/bin/env bash
# Phalanx on a kind cluster, for people with Docker (this repository's CI has no Docker
# engine: see the README for what is tested here and what is not).
#
#   hack/kind/up.sh      create the cluster, build and load the images, install the charts
#   hack/kind/down.sh    delete it
#
# Needs docker, kind (0.30+), helm (hack/helm/build.sh builds one), kubectl, cargo.
# KIND_NODE_IMAGE picks the node image (default: kind's for Kubernetes 1.37).
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${KIND_CLUSTER_NAME:-phalanx}
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind: $tool is not installed" >&2; exit 1; }
done
helm=${HELM:-$(command -v helm || bash hack/helm/build.sh)}
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "kind cluster $cluster (hack/kind/cluster.yaml)"
image_args=()
[ -n "${KIND_NODE_IMAGE:-}" ] && image_args=(--image "$KIND_NODE_IMAGE")
kind get clusters 2>/dev/null | grep -qx "$cluster" ||
  kind create cluster --name "$cluster" --config hack/kind/cluster.yaml "${image_args[@]}"
kubectl config use-context "kind-$cluster" >/dev/null

say "building the images (make images) and loading them into the nodes"
make images
for archive in target/images/phalanx-scheduler.tar target/images/phalanx-dra-driver.tar target/images/phalanx-worker.tar; do
  kind load image-archive --name "$cluster" "$archive"
done

say "installing deploy/helm/phalanx (fake GPUs: driver.profile=hgx-h100-8)"
"$helm" upgrade --install phalanx deploy/helm/phalanx --namespace phalanx-system --create-namespace \
  --set image.pullPolicy=Never --set driver.profile=hgx-h100-8 --wait --timeout 180s
kubectl get resourceslices

say "a prefill/decode set (deploy/helm/phalanx-pd): 1 prefill + 1 decode worker, KV within a rack"
"$helm" upgrade --install llama deploy/helm/phalanx-pd --namespace serving --create-namespace \
  --set image.pullPolicy=Never --set kvTransfer.domain=rack --set kvTransfer.policy=preferred
kubectl -n serving wait --for=condition=Ready pod/llama-prefill-0 pod/llama-decode-0 --timeout=180s
kubectl -n serving get pods -o wide

say "a completion through the decode worker"
kubectl -n serving port-forward svc/llama 8000 >/dev/null 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT
sleep 2
curl -s localhost:8000/v1/completions -H 'content-type: application/json' -d '{"prompt":"Hello from kind","max_tokens":16}'
echo
say "done: kubectl --context kind-$cluster ...; hack/kind/down.sh deletes the cluster"
