#!/usr/bin/env bash
# Builds (or reuses) the reference control-plane binaries from the Go module proxy for one
# Kubernetes minor version: kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd and kwok, and on request the kubelet (for real nodes).
#
# PHALANX_K8S picks the version: 1.37 (default) or 1.36; each has its pinned modules in
# hack/envtest/<version>/{kube,etcd}, kwok is shared (hack/envtest/kwok). The cache
# directory is keyed on those go.mod/go.sum files, the toolchain and the recipe number
# below, so a version change rebuilds and nothing else does. Each binary is built only
# if it is missing, so asking for the kubelet later adds it to the same directory.
# Prints the bin directory on its last line of stdout; everything else goes to stderr.
#
#   hack/envtest/build.sh                  build or reuse, print the bin dir
#   hack/envtest/build.sh --versions       also print each binary's version
#   hack/envtest/build.sh kubelet          also build the kubelet
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="${PHALANX_K8S:-1.37}"
case "$k8s" in
  1.36 | 1.37) ;;
  *) echo "envtest: PHALANX_K8S=$k8s is not supported (1.36 or 1.37)" >&2; exit 2 ;;
esac
# Kubernetes 1.37 needs Go 1.27; a fresh machine has Go 1.26 and the go command fetches
# this toolchain from the module proxy. 1.36 builds with it as well.
export GOTOOLCHAIN="${PHALANX_GOTOOLCHAIN:-go1.27.3}"
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

versions=()
extra=()
for arg in "$@"; do
  case "$arg" in
    --versions) versions=(yes) ;;
    kubelet) extra+=(kubelet) ;;
    *) echo "envtest: unknown argument $arg (--versions, kubelet)" >&2; exit 2 ;;
  esac
done

kube_mod="$here/$k8s/kube"
etcd_mod="$here/$k8s/etcd"
kwok_mod="$here/kwok"

# The version a go.mod requires, whether it sits in a require block or on one line.
required_version() { awk -v m="$2" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$1"; }
kube_version=$(required_version "$kube_mod/go.mod" k8s.io/kubernetes)
etcd_version=$(required_version "$etcd_mod/go.mod" go.etcd.io/etcd/server/v3)
kwok_version=$(required_version "$kwok_mod/go.mod" sigs.k8s.io/kwok)

# Bump when the build recipe below changes in a way that changes the binaries.
recipe=2
key=$( (echo "recipe=$recipe toolchain=$GOTOOLCHAIN"; cat "$kube_mod"/go.* "$etcd_mod"/go.* "$kwok_mod"/go.*) | sha256sum | cut -c1-12)
cache_root="${PHALANX_ENVTEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phalanx/envtest}"
dir="$cache_root/kube-${kube_version}_etcd-${etcd_version}_kwok-${kwok_version}_${key}"
bin="$dir/bin"

log() { printf 'envtest: %s\n' "$*" >&2; }

kube_ldflags() {
  local v=$kube_version minor flags="-s -w"
  minor=$(echo "$v" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags="$flags -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    flags="$flags -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# build NAME: go build one binary into $bin, atomically (a build cut short leaves nothing).
build() {
  local name=$1 mod pkg ldflags
  case "$name" in
    etcd) mod=$etcd_mod pkg=go.etcd.io/etcd/server/v3 ldflags="-s -w" ;;
    kwok) mod=$kwok_mod pkg=sigs.k8s.io/kwok/cmd/kwok ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" ;;
    *) mod=$kube_mod pkg=k8s.io/kubernetes/cmd/$name ldflags=$(kube_ldflags) ;;
  esac
  log "  go build $name ($GOTOOLCHAIN)"
  (cd "$mod" && go build -trimpath -tags providerless -ldflags "$ldflags" -o "$bin/.$name.partial" "$pkg")
  mv "$bin/.$name.partial" "$bin/$name"
}

wanted=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok "${extra[@]}")
missing=()
for name in "${wanted[@]}"; do
  [ -x "$bin/$name" ] || missing+=("$name")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mkdir -p "$bin"
  log "building ${missing[*]} (Kubernetes $kube_version, etcd $etcd_version, kwok $kwok_version) into $dir; a first build takes a while"
  for name in "${missing[@]}"; do build "$name"; done
else
  log "reusing $bin"
fi

if [ -n "${versions[*]}" ]; then
  # First lines via `sed -n 1p`, which reads to the end: `head -1` exits early, and a
  # version command still writing then dies of SIGPIPE, failing this script (pipefail).
  {
    "$bin/kube-apiserver" --version
    "$bin/kube-controller-manager" --version
    "$bin/kube-scheduler" --version
    "$bin/kubectl" version --client 2>/dev/null | sed -n 1p
    "$bin/etcd" --version | sed -n 1p
    "$bin/kwok" --version 2>/dev/null | sed -n 1p
    if [ -x "$bin/kubelet" ]; then "$bin/kubelet" --version; fi
  } >&2
fi

echo "$bin"
