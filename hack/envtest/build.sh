#!/usr/bin/env bash
# Builds (or reuses) the reference control-plane binaries from the Go module proxy:
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd and kwok.
#
# The cache directory is keyed on the pinned go.mod/go.sum files and the recipe number
# below, so a version change rebuilds and nothing else does. Prints the bin directory on its last
# line of stdout; everything else goes to stderr.
#
#   hack/envtest/build.sh            build or reuse, print the bin dir
#   hack/envtest/build.sh --versions also print each binary's version
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

# The version a go.mod requires, whether it sits in a require block or on one line.
required_version() { awk -v m="$2" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$1"; }
kube_version=$(required_version "$here/kube/go.mod" k8s.io/kubernetes)
etcd_version=$(required_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)
kwok_version=$(required_version "$here/kwok/go.mod" sigs.k8s.io/kwok)

# Bump when the build recipe below changes in a way that changes the binaries.
recipe=1
key=$( (echo "recipe=$recipe"; cat "$here"/*/go.mod "$here"/*/go.sum) | sha256sum | cut -c1-12)
cache_root="${PHALANX_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phalanx/envtest}"
dir="$cache_root/kube-${kube_version}_etcd-${etcd_version}_kwok-${kwok_version}_${key}"
bin="$dir/bin"

log() { printf 'envtest: %s\n' "$*" >&2; }

ldflags_for_kube() {
  local v=$1 minor
  minor=$(echo "$v" | cut -d. -f2)
  local flags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags="$flags -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    flags="$flags -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_all() {
  local tmp="$dir/bin.partial"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "building Kubernetes $kube_version, etcd $etcd_version, kwok $kwok_version into $dir (first run takes a while)"
  local kube_ldflags
  kube_ldflags=$(ldflags_for_kube "$kube_version")
  (
    cd "$here/kube"
    for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
      log "  go build $cmd"
      go build -trimpath -tags providerless -ldflags "$kube_ldflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
  )
  (
    cd "$here/etcd"
    log "  go build etcd"
    go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
  )
  (
    cd "$here/kwok"
    log "  go build kwok"
    go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok
  )
  rm -rf "$bin"
  mv "$tmp" "$bin"
}

if [ ! -x "$bin/kwok" ]; then
  build_all
else
  log "reusing $bin"
fi

if [ "${1:-}" = "--versions" ]; then
  # First lines via `sed -n 1p`, which reads to the end: `head -1` exits early, and a
  # version command still writing then dies of SIGPIPE, failing this script (pipefail).
  {
    "$bin/kube-apiserver" --version
    "$bin/kube-controller-manager" --version
    "$bin/kube-scheduler" --version
    "$bin/kubectl" version --client 2>/dev/null | sed -n 1p
    "$bin/etcd" --version | sed -n 1p
    "$bin/kwok" --version 2>/dev/null | sed -n 1p
  } >&2
fi

echo "$bin"
