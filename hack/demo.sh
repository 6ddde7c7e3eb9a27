#!/usr/bin/env bash
# make demo: the whole system on this machine, with fake hardware.
#
# Starts the local control plane (hack/envtest binaries: etcd, kube-apiserver,
# kube-controller-manager, kwok), two GB200 NVL72 racks (36 trays × 4 GPUs) and four
# HGX H100 nodes (8 GPUs) as kwok nodes whose devices phalanx-dra-driver publishes from
# hardware profiles, and phalanx-scheduler. Then applies deploy/examples/demo/ and
# prints where every pod landed (node, GPUs, NVLink domain) and why pending ones wait.
# Ctrl-C stops everything. DEMO_EXIT=1 exits after the report (for a quick check).
#
# DEMO_REAL_NODES=N adds N real nodes (a real kubelet and containerd each, see
# docs/real-nodes.md; needs root): phalanx-dra-driver runs as each one's kubelet plugin
# with the HGX H100 profile, and a gang of N pods x 8 GPUs (one per real node) really
# runs there, each container printing the GPUs its claim gave it.
set -euo pipefail
cd "$(dirname "$0")/.."
# Kubernetes 1.37 needs Go 1.27; the go command fetches it from the module proxy.
export GOTOOLCHAIN=go1.27.3

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "building phalanx (cargo build) and the control-plane binaries (hack/envtest)"
cargo build -q -p phalanx-tests -p phalanx-dra-driver -p phalanx-scheduler --bins
real_nodes=${DEMO_REAL_NODES:-0}
if [ "$real_nodes" -gt 0 ]; then
  bin_dir=$(bash hack/envtest/build.sh kubelet)
  PHALANX_NODE_BIN=$(bash hack/node/build.sh)
  PHALANX_IMAGES=$(bash hack/images/build.sh base)
  export PHALANX_NODE_BIN PHALANX_IMAGES
else
  bin_dir=$(bash hack/envtest/build.sh)
fi
export PHALANX_ENVTEST_BIN="$bin_dir"
work=$(mktemp -d -t phalanx-demo-XXXXXX)
export KUBECONFIG="$work/kubeconfig"
kubectl() { "$bin_dir/kubectl" "$@"; }

pids=()
cleanup() {
  trap - EXIT INT TERM
  say "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs kept in $work"
}
trap cleanup EXIT INT TERM

say "starting the control plane (logs: $work/testenv.log)"
target/debug/phalanx-testenv up --real-nodes "$real_nodes" --write-kubeconfig "$KUBECONFIG" \
  >"$work/testenv.out" 2>"$work/testenv.log" &
pids+=($!)
# The kubeconfig is written once the control plane (and any real node) is ready.
for _ in $(seq 1 900); do [ -s "$KUBECONFIG" ] && break; sleep 0.2; done
[ -s "$KUBECONFIG" ] || { cat "$work/testenv.log"; echo "control plane did not start" >&2; exit 1; }

say "fake cluster: 2 × GB200 NVL72 racks (36 trays × 4 GPUs), 4 × HGX H100 (8 GPUs)"
kubectl apply -f deploy/dra-driver/deviceclasses.yaml >/dev/null
kubectl apply -f hack/demo-nodes.yaml >/dev/null

say "phalanx-dra-driver publishing ResourceSlices from hardware profiles (logs: $work/driver-*.log)"
for profile in gb200-nvl72 hgx-h100-8; do
  target/debug/phalanx-dra-driver publish --profile "$profile" --node-selector "phalanx.dev/profile=$profile" \
    --remove-slices-on-exit >"$work/driver-$profile.log" 2>&1 &
  pids+=($!)
done

if [ "$real_nodes" -gt 0 ]; then
  say "$real_nodes real node(s): phalanx-dra-driver as each kubelet's plugin (logs: $work/driver-real-*.log)"
  # testenv prints `real node <name> (<ip>) Ready; kubelet root <dir>, CDI dir <dir>`.
  while read -r _ _ name _ _ _ _ kubelet_root _ _ cdi_dir; do
    kubelet_root=${kubelet_root%,}
    target/debug/phalanx-dra-driver run --node-name "$name" --profile hgx-h100-8 \
      --kubelet-root "$kubelet_root" --cdi-root "$cdi_dir" --remove-slices-on-exit \
      >"$work/driver-$name.log" 2>&1 &
    pids+=($!)
  done < <(grep '^real node ' "$work/testenv.log")
fi

say "phalanx-scheduler (logs: $work/scheduler.log)"
target/debug/phalanx-scheduler run --no-leader-election --bind-address 127.0.0.1:0 >"$work/scheduler.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 150); do
  n=$(kubectl get resourceslices --no-headers 2>/dev/null | wc -l)
  [ "$n" -ge 40 ] && break
  sleep 0.2
done
say "$(kubectl get resourceslices --no-headers | wc -l) ResourceSlices published"

say "applying deploy/examples/demo/"
for f in deploy/examples/demo/*.yaml; do
  kubectl apply -f "$f" >/dev/null
  echo "    $f"
done

say "waiting for placements to settle"
# Everything but the too-big gang fits: 4 P/D workers, 16 training workers (a Job), 5 singles.
expected=25
for _ in $(seq 1 300); do
  bound=$(kubectl get pods -n demo -l 'phalanx.dev/gang!=too-big' --no-headers -o custom-columns=N:.spec.nodeName 2>/dev/null | grep -vc '<none>' || true)
  waiting=$(kubectl get pods -n demo -l phalanx.dev/gang=too-big -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="PodScheduled")].reason}{"\n"}{end}' 2>/dev/null | grep -c Unschedulable || true)
  [ "$bound" -ge "$expected" ] && [ "$waiting" -ge 40 ] && break
  sleep 0.2
done
sleep 1

python3 hack/demo-report.py "$bin_dir/kubectl"

if [ "$real_nodes" -gt 0 ]; then
  say "a gang of $real_nodes pod(s) x 8 GPUs on the real nodes (ghcr.io/phalanx-dev/testbox, run by containerd)"
  hosts=$(seq -s, -f 'real-%g' 0 $((real_nodes - 1)))
  for i in $(seq 0 $((real_nodes - 1))); do
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: real-$i
  namespace: demo
  labels: { phalanx.dev/gang: on-real-nodes }
  annotations: { phalanx.dev/gang-min-members: "$real_nodes" }
spec:
  schedulerName: phalanx-scheduler
  terminationGracePeriodSeconds: 1
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{ matchExpressions: [{ key: kubernetes.io/hostname, operator: In, values: [$hosts] }] }]
  resourceClaims: [{ name: gpus, resourceClaimTemplateName: eight-gpus-one-island }]
  containers:
    - name: main
      image: ghcr.io/phalanx-dev/testbox:1.35.0
      imagePullPolicy: Never
      command: [sh, -c, 'echo "on \$PHALANX_NODE_NAME:"; env | grep "^PHALANX_GPU_.*_UUID" | sort; exec sleep 86400']
      resources: { claims: [{ name: gpus }] }
---
EOF
  done | kubectl apply -f - >/dev/null
  for _ in $(seq 1 300); do
    running=$(kubectl get pods -n demo -l phalanx.dev/gang=on-real-nodes --no-headers 2>/dev/null | grep -c Running || true)
    [ "$running" -ge "$real_nodes" ] && break
    sleep 0.2
  done
  kubectl get pods -n demo -l phalanx.dev/gang=on-real-nodes -o wide
  for i in $(seq 0 $((real_nodes - 1))); do kubectl logs -n demo "real-$i" 2>/dev/null | head -3; echo "    ..."; done
fi
metrics=$(grep -m1 -o 'address=[0-9.:]*' "$work/scheduler.log" | cut -d= -f2)
echo "scheduler metrics: http://$metrics/metrics   (kubectl: $bin_dir/kubectl, KUBECONFIG=$KUBECONFIG)"

if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
say "running; Ctrl-C stops everything (KUBECONFIG=$KUBECONFIG)"
wait
