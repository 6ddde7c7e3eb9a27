#!/usr/bin/env bash
# make demo: the whole system on this machine, with fake hardware.
#
# Starts the local control plane (hack/envtest binaries: etcd, kube-apiserver,
# kube-controller-manager, kwok), two GB200 NVL72 racks (36 trays × 4 GPUs) and four
# HGX H100 nodes (8 GPUs) as kwok nodes whose devices phalanx-dra-driver publishes from
# hardware profiles, and phalanx-scheduler. Then applies deploy/examples/demo/ and
# prints where every pod landed (node, GPUs, NVLink domain) and why pending ones wait.
# Ctrl-C stops everything. DEMO_EXIT=1 exits after the report (for a quick check).
set -euo pipefail
cd "$(dirname "$0")/.."
# Kubernetes 1.37 needs Go 1.27; the go command fetches it from the module proxy.
export GOTOOLCHAIN=go1.27.3

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "building phalanx (cargo build) and the control-plane binaries (hack/envtest)"
cargo build -q -p phalanx-tests -p phalanx-dra-driver -p phalanx-scheduler --bins
bin_dir=$(bash hack/envtest/build.sh)
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
target/debug/phalanx-testenv up --write-kubeconfig "$KUBECONFIG" >"$work/testenv.out" 2>"$work/testenv.log" &
pids+=($!)
for _ in $(seq 1 300); do [ -s "$KUBECONFIG" ] && break; sleep 0.2; done
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
metrics=$(grep -m1 -o 'address=[0-9.:]*' "$work/scheduler.log" | cut -d= -f2)
echo "scheduler metrics: http://$metrics/metrics   (kubectl: $bin_dir/kubectl, KUBECONFIG=$KUBECONFIG)"

if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
say "running; Ctrl-C stops everything (KUBECONFIG=$KUBECONFIG)"
wait
