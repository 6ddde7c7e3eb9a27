#!/usr/bin/env bash
# Renders the plain manifests in deploy/ from the Helm chart (the one source of truth):
# `helm template` with the default values in namespace phalanx-system, one file per
# chart template. `--check` fails, listing the files, when deploy/ is not what the chart
# renders (the tests run it).
set -euo pipefail
cd "$(dirname "$0")/.."
helm=${PHALANX_HELM:-$(bash hack/helm/build.sh)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$helm" template phalanx deploy/helm/phalanx --namespace phalanx-system --set namespace.create=true >"$out/all.yaml"
python3 - "$out" <<'PY'
import os, re, sys
out = sys.argv[1]
text = open(os.path.join(out, "all.yaml")).read()
# template path -> deploy path
where = {"namespace.yaml": "deploy/namespace.yaml"}
files = {}
for doc in re.split(r"^---\n", text, flags=re.M):
    m = re.match(r"# Source: phalanx/templates/(\S+)\n", doc)
    if not m or not doc[m.end():].strip():
        continue
    src = m.group(1)
    dest = where.get(src) or ("deploy/" + src.replace("driver/", "dra-driver/", 1))
    files.setdefault(dest, []).append(doc[m.end():].rstrip() + "\n")
header = "# Generated from deploy/helm/phalanx by `make manifests`: edit the chart, not this file.\n"
for dest, docs in files.items():
    path = os.path.join(out, "rendered", dest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(header + "---\n".join(docs))
PY
if [ "${1:-}" = --check ]; then
  stale=0
  while IFS= read -r f; do
    rel=${f#"$out/rendered/"}
    if ! cmp -s "$f" "$rel"; then echo "stale: $rel (run \`make manifests\`)" >&2; stale=1; fi
  done < <(find "$out/rendered" -type f | sort)
  exit $stale
fi
cp -r "$out/rendered/deploy/." deploy/
find "$out/rendered" -type f | sed "s|$out/rendered/||" | sort
