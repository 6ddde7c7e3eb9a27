#!/usr/bin/env bash
# Builds (or reuses) helm from the Go module proxy (helm.sh/helm/v4, pinned below), cached
# like hack/envtest: the cache directory is keyed on this script and the toolchain. Prints
# the binary's path on its last line of stdout; everything else goes to stderr.
set -euo pipefail

HELM_VERSION=v4.3.2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export GOTOOLCHAIN="${PHALANX_GOTOOLCHAIN:-go1.27.3}"
export GOFLAGS=-mod=mod
key=$( (echo "toolchain=$GOTOOLCHAIN"; cat "$here/build.sh") | sha256sum | cut -c1-12)
dir="${PHALANX_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phalanx/helm}/helm-${HELM_VERSION}_${key}"
bin="$dir/helm"
if [ ! -x "$bin" ]; then
  printf 'helm: building %s with %s into %s\n' "$HELM_VERSION" "$GOTOOLCHAIN" "$dir" >&2
  src=$(go mod download -json "helm.sh/helm/v4@$HELM_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] || { echo "helm: go mod download gave no directory" >&2; exit 1; }
  work=$(mktemp -d)
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  mkdir -p "$dir"
  (cd "$work" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    -o "$bin.partial" ./cmd/helm)
  mv "$bin.partial" "$bin"
  rm -rf "$work"
fi
echo "$bin"
