#!/usr/bin/env python3
"""Prints where every demo pod landed: node, GPUs, NVLink domain; and why pending ones wait."""
import json
import subprocess
import sys

kubectl = sys.argv[1]


def get(*args):
    return json.loads(subprocess.check_output([kubectl, "get", *args, "-o", "json"]))["items"]


pods = get("pods", "-n", "demo")
claims = {c["metadata"]["name"]: c for c in get("resourceclaims", "-n", "demo")}
domain = {}  # (pool, device) -> nvlinkDomain
for s in get("resourceslices"):
    for d in s["spec"].get("devices", []):
        attrs = d.get("attributes", {})
        dom = attrs.get("gpu.phalanx.dev/nvlinkDomain", attrs.get("nvlinkDomain", {})).get("string")
        domain[(s["spec"]["pool"]["name"], d["name"])] = dom

rows, pending = [], []
for p in sorted(pods, key=lambda p: (p["metadata"].get("labels", {}).get("phalanx.dev/gang", "~"), p["metadata"]["name"])):
    name = p["metadata"]["name"]
    gang = p["metadata"].get("labels", {}).get("phalanx.dev/gang", "-")
    node = p["spec"].get("nodeName")
    if not node:
        why = next((c.get("message", "") for c in p.get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"), "not looked at yet")
        pending.append((gang, name, why))
        continue
    devices, domains = [], set()
    for st in p.get("status", {}).get("resourceClaimStatuses", []):
        claim = claims.get(st.get("resourceClaimName") or "")
        results = ((claim or {}).get("status", {}).get("allocation", {}).get("devices", {}) or {}).get("results", [])
        for r in results:
            devices.append(r["device"])
            domains.add(domain.get((r["pool"], r["device"])) or "-")
    rows.append((gang, name, node, ",".join(devices) or "-", ",".join(sorted(domains)) or "-"))

w = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(["GANG", "POD", "NODE", "GPUS", "NVLINK DOMAIN"])]
print()
print("  ".join(h.ljust(w[i]) for i, h in enumerate(["GANG", "POD", "NODE", "GPUS", "NVLINK DOMAIN"])))
for r in rows:
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
if pending:
    print()
    print(f"PENDING ({len(pending)} pods):")
    shown = set()
    for gang, name, why in pending:
        key = (gang, why)
        if key in shown:
            continue
        shown.add(key)
        n = sum(1 for g, _, y in pending if (g, y) == key)
        print(f"  gang {gang} ({n} pods, e.g. {name}): {why}")
print()
