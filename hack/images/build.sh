#!/usr/bin/env bash
# Builds container images without a Docker engine, as OCI archives that
# `ctr images import` (and `docker load`, `skopeo`, `crane`) read.
#
#   hack/images/build.sh base                 pause + testbox (cached; prints the dir)
#   hack/images/build.sh phalanx [OUT]        phalanx-scheduler, phalanx-dra-driver and
#                                             phalanx-worker from static musl binaries
#                                             (the driver's agent: glibc, see below)
#                                             into OUT (default target/images)
#   hack/images/build.sh worker [OUT]         phalanx-worker only (what the tests run)
#
# Each archive is `<name>.tar`: an OCI image layout with one single-layer image whose
# index entry is annotated `io.containerd.image.name=<registry>/<name>:<tag>` (so
# containerd imports it under that name) and `org.opencontainers.image.ref.name=<tag>`.
#
# The tool is umoci (Debian's package, installed here when missing): it writes OCI
# layouts natively, builds the layer from a plain directory and lets every timestamp be
# set, so the same inputs give the same digests. Our part is the root file systems:
# files with fixed times (SOURCE_DATE_EPOCH), and a tar of the layout with sorted names
# and fixed owners and times. The Dockerfiles beside this script build the same file
# systems for people who have Docker.
#
# Base images are cached in ~/.cache/phalanx/images/<key>, keyed on this script,
# versions.env and pause.c. The last line of stdout is the output directory; everything
# else goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
log() { printf 'images: %s\n' "$*" >&2; }

need() {
  local missing=()
  command -v umoci >/dev/null || missing+=(umoci)
  [ "${1:-}" != busybox ] || command -v dpkg-deb >/dev/null || missing+=(dpkg)
  [ "${1:-}" != musl ] || command -v musl-gcc >/dev/null || missing+=(musl-tools)
  [ "${#missing[@]}" = 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} (Debian)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    log "needs ${missing[*]}: install it (Debian/Ubuntu: apt-get install ${missing[*]}) and run again"
    exit 1
  fi
}

# image NAME TAG ROOTFS EPOCH OUT_TAR [ENTRYPOINT...]: a one-layer image of ROOTFS.
image() {
  local name=$1 tag=$2 rootfs=$3 epoch=$4 out=$5
  shift 5
  local work created
  work=$(mktemp -d)
  created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$tag"
  umoci unpack --image "$work/layout:$tag" "$work/bundle" >/dev/null
  cp -a "$rootfs/." "$work/bundle/rootfs/"
  find "$work/bundle/rootfs" -exec touch -h -d "@$epoch" {} +
  umoci repack --image "$work/layout:$tag" --history.created "$created" \
    --history.created_by "hack/images/build.sh $name" "$work/bundle"
  local config=(--created "$created" --no-history --architecture amd64 --os linux
    --config.label "org.opencontainers.image.title=$name"
    --config.label "org.opencontainers.image.version=$tag"
    --config.label "org.opencontainers.image.source=https://github.com/phalanx-dev/phalanx")
  for arg in "$@"; do config+=(--config.entrypoint "$arg"); done
  config+=("${IMAGE_LABELS[@]+"${IMAGE_LABELS[@]}"}")
  umoci config --image "$work/layout:$tag" "${config[@]}"
  umoci gc --layout "$work/layout"
  # The name containerd imports the image under (ctr reads the index entry's annotation).
  python3 - "$work/layout/index.json" "$REGISTRY/$name:$tag" <<'PY'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for m in index["manifests"]:
    m.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(index, open(path, "w"), separators=(",", ":"), sort_keys=True)
PY
  touch -h -d "@$epoch" "$work/layout" "$work/layout"/* "$work/layout/blobs/sha256"/*
  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work/layout" -cf "$out.partial" .
  mv "$out.partial" "$out"
  rm -rf "$work"
  log "  $REGISTRY/$name:$tag → $out ($(du -h "$out" | cut -f1), $(digest "$out"))"
}

# digest TAR: the manifest digest of the archive's image.
digest() {
  tar -xOf "$1" ./index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])'
}

base() {
  local key dir
  key=$( (cat "$here/build.sh" "$here/versions.env" "$here/pause/pause.c"; gcc --version | head -1) | sha256sum | cut -c1-12)
  dir="${PHALANX_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phalanx/images}/base-$key"
  if [ -f "$dir/pause.tar" ] && [ -f "$dir/testbox.tar" ]; then
    log "reusing $dir"
    echo "$dir"
    return
  fi
  need busybox
  mkdir -p "$dir"
  local work
  work=$(mktemp -d)
  # pause: a static C binary, nothing else.
  mkdir -p "$work/pause/bin"
  gcc -static -Os -s -o "$work/pause/bin/pause" "$here/pause/pause.c"
  image pause "$PAUSE_TAG" "$work/pause" "$BASE_EPOCH" "$dir/pause.tar" /bin/pause
  # testbox: Debian's static busybox (sh, env, cat, sleep, ...) for test pods.
  (cd "$work" && apt-get download -qq "busybox-static=$BUSYBOX_DEB" >&2 2>/dev/null) || {
    apt-get update -qq >&2
    (cd "$work" && apt-get download -qq "busybox-static=$BUSYBOX_DEB" >&2)
  }
  dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"
  mkdir -p "$work/testbox/bin" "$work/testbox/tmp" "$work/testbox/etc"
  cp "$work/deb/bin/busybox" "$work/testbox/bin/busybox"
  for tool in sh env cat ls sleep echo grep sed printf test true false wc sort tr head tail date id kill ps wget nc; do
    ln -s busybox "$work/testbox/bin/$tool"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$work/testbox/etc/passwd"
  echo 'root:x:0:' >"$work/testbox/etc/group"
  chmod 1777 "$work/testbox/tmp"
  image testbox "$TESTBOX_TAG" "$work/testbox" "$BASE_EPOCH" "$dir/testbox.tar" /bin/sh
  rm -rf "$work"
  echo "$dir"
}

phalanx() {
  local out=${1:-$repo/target/images} target=x86_64-unknown-linux-musl version epoch
  local names=(${PHALANX_IMAGE_NAMES:-phalanx-scheduler phalanx-dra-driver phalanx-worker})
  # ring (TLS) compiles C for the target: musl-gcc.
  need musl
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -1)
  # The commit's time, so a rebuild of the same commit gives the same images.
  epoch=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo "$BASE_EPOCH")
  rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target" >&2
  log "cargo build --release --target $target (static binaries)"
  (cd "$repo" && RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$repo=/phalanx" \
    cargo build --release --locked --target "$target" "${names[@]/#/-p=}" >&2)
  # The driver's agent loads NVML, a shared library of the host's driver, with dlopen,
  # which a static musl binary cannot do: the image's agent is a glibc build, with the
  # shared libraries it needs taken from this machine. The static binary stays beside it
  # as phalanx-dra-driver-static: the CDI hook the container runtime runs on the host,
  # whatever libc the host has.
  local gnu=x86_64-unknown-linux-gnu
  if [[ " ${names[*]} " == *" phalanx-dra-driver "* ]]; then
    log "cargo build --release --target $gnu -p phalanx-dra-driver (the agent, dynamic glibc)"
    (cd "$repo" && RUSTFLAGS="--remap-path-prefix=$repo=/phalanx" \
      cargo build --release --locked --target "$gnu" -p phalanx-dra-driver >&2)
  fi
  mkdir -p "$out"
  local work
  work=$(mktemp -d)
  for name in "${names[@]}"; do
    mkdir -p "$work/$name/usr/local/bin" "$work/$name/tmp"
    chmod 1777 "$work/$name/tmp"
    if [ "$name" = phalanx-dra-driver ]; then
      local bin="$repo/target/$gnu/release/$name"
      cp "$bin" "$work/$name/usr/local/bin/$name"
      cp "$repo/target/$target/release/$name" "$work/$name/usr/local/bin/$name-static"
      # Every shared library the agent needs, and the loader, at the paths it names them.
      local lib
      for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}'); do
        mkdir -p "$work/$name$(dirname "$lib")"
        cp -L "$lib" "$work/$name$lib"
      done
    else
      cp "$repo/target/$target/release/$name" "$work/$name/usr/local/bin/$name"
    fi
    local labels=()
    if [ "$name" = phalanx-worker ]; then
      # Defaults of the placement hints (the pod's labels and annotations are the truth).
      labels=(--config.label "phalanx.dev/role=both" --config.label "phalanx.dev/kv-domain=node"
        --config.label "phalanx.dev/kv-domain-policy=preferred"
        --config.label "phalanx.dev/kv-bytes-per-token=$((4 * 2 * 4 * 16 * 4))")
    fi
    IMAGE_LABELS=("${labels[@]}")
    image "$name" "$version" "$work/$name" "$epoch" "$out/$name.tar" "/usr/local/bin/$name"
    IMAGE_LABELS=()
  done
  rm -rf "$work"
  echo "$out"
}

IMAGE_LABELS=()
case "${1:-}" in
  base) base ;;
  phalanx) phalanx "${2:-}" ;;
  worker) PHALANX_IMAGE_NAMES=phalanx-worker phalanx "${2:-}" ;;
  *)
    echo "usage: $0 base | phalanx [OUT] | worker [OUT]" >&2
    exit 2
    ;;
esac
