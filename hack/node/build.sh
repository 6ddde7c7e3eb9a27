#!/usr/bin/env bash
# Builds (or reuses) what a real test node runs, from the Go module proxy: containerd,
# ctr and the runc shim, runc, crictl and the CNI plugins (bridge, host-local, loopback,
# portmap); the kubelet comes from hack/envtest (same release as the control plane).
#
# Versions are pinned in versions.env beside this script. The cache directory is keyed
# on that file, the toolchain and the recipe number below, so a version change rebuilds
# and nothing else does; each binary is built only if it is missing. Prints the bin
# directory on its last line of stdout; everything else goes to stderr.
#
#   hack/node/build.sh              build or reuse, print the bin dir
#   hack/node/build.sh --versions   also print each binary's version
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Kubernetes 1.37 needs Go 1.27; the go command fetches it from the module proxy.
export GOTOOLCHAIN="${PHALANX_GOTOOLCHAIN:-go1.27.3}"
export GOFLAGS=-mod=mod
# shellcheck source=versions.env
source "$here/versions.env"

recipe=1
key=$( (echo "recipe=$recipe toolchain=$GOTOOLCHAIN"; cat "$here/versions.env") | sha256sum | cut -c1-12)
cache_root="${PHALANX_NODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phalanx/node}"
dir="$cache_root/containerd-${CONTAINERD}_runc-${RUNC}_${key}"
bin="$dir/bin"
log() { printf 'node: %s\n' "$*" >&2; }

# source MODULE VERSION: a writable copy of the module's source (its own go.mod, replace
# lines and all, which `go install mod@version` would refuse).
source_of() {
  local mod=$1 version=$2 src
  src=$(go mod download -json "$mod@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { log "go mod download $mod@$version gave no directory"; exit 1; }
  local out="$dir/src/${mod//\//_}@$version"
  if [ ! -d "$out" ]; then
    mkdir -p "$dir/src"
    cp -r "$src" "$out.partial"
    chmod -R u+w "$out.partial"
    mv "$out.partial" "$out"
  fi
  echo "$out"
}

# build NAME MODULE VERSION PACKAGE CGO TAGS LDFLAGS
build() {
  local name=$1 mod=$2 version=$3 pkg=$4 cgo=$5 tags=$6 ldflags=$7 src
  [ -x "$bin/$name" ] && return 0
  src=$(source_of "$mod" "$version")
  log "  go build $name ($mod $version, $GOTOOLCHAIN)"
  (cd "$src" && CGO_ENABLED=$cgo go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$bin/.$name.partial" "$pkg")
  mv "$bin/.$name.partial" "$bin/$name"
}

need_seccomp() {
  # runc's seccomp support links libseccomp (cgo): Debian's libseccomp-dev.
  if ! pkg-config --exists libseccomp 2>/dev/null && [ ! -e /usr/include/seccomp.h ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "installing libseccomp-dev (runc links it)"
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev pkg-config >&2
    else
      log "runc needs libseccomp-dev (Debian) / libseccomp-devel: install it and run again"
      exit 1
    fi
  fi
}

# The node namespaces make the `kubernetes` Service reachable with a DNAT rule.
if ! command -v iptables >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing iptables (real nodes route the kubernetes Service with it)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >&2
  else
    log "real nodes need iptables: install it (Debian: apt-get install iptables)"
  fi
fi

mkdir -p "$bin"
containerd_tags="urfave_cli_no_docs no_btrfs no_devmapper no_zfs osusergo netgo static_build"
containerd_ld="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD"
missing=0
for name in containerd ctr containerd-shim-runc-v2 runc crictl bridge host-local loopback portmap; do
  [ -x "$bin/$name" ] || missing=1
done
if [ "$missing" = 1 ]; then
  log "building node binaries (containerd $CONTAINERD, runc $RUNC, crictl $CRICTL, CNI plugins $CNI_PLUGINS) into $dir"
  for cmd in containerd ctr containerd-shim-runc-v2; do
    build "$cmd" github.com/containerd/containerd/v2 "$CONTAINERD" "./cmd/$cmd" 0 "$containerd_tags" "$containerd_ld"
  done
  need_seccomp
  build runc github.com/opencontainers/runc "$RUNC" . 1 "seccomp urfave_cli_no_docs" \
    "-s -w -X main.version=${RUNC#v}"
  build crictl sigs.k8s.io/cri-tools "$CRICTL" ./cmd/crictl 0 "" \
    "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL"
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    build "${p#*/}" github.com/containernetworking/plugins "$CNI_PLUGINS" "./plugins/$p" 0 "" "-s -w"
  done
  rm -rf "$dir/src"
else
  log "reusing $bin"
fi

if [ "${1:-}" = "--versions" ]; then
  {
    "$bin/containerd" --version
    "$bin/runc" --version | sed -n 1p
    "$bin/crictl" --version
  } >&2
fi
echo "$bin"
