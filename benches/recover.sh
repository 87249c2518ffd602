#!/usr/bin/env bash
# Benchmark: backups (issue 16, part 1) on one default lab cluster (3 managers with Consul,
# 2 nodes): RUNS backups taken one after another with `coordinator backup`; for each, the
# wall time of the command, each kind's time (request → stored file) and size (the archive,
# and the encrypted file). Prints each backup as a JSON line (also kept in $OUT), then a
# Markdown table: median [min–max].
# Then `recover`, twice on the same cluster: two managers removed (`docker rm -f`, the
# leader among them) → from the survivor; all three removed → from the backups. For each:
# seconds to a swarm leader again and to full strength (3 managers, 3 Consul voters, verified),
# from `recover --output json`, and the command's wall time (it waits first until the control
# plane too has lost the removed hosts' agents: at most three heartbeats, 15 s).
#
#   bash benches/recover.sh [RUNS]          (default: 5)
#   CLUSTER=name PROFILE=debug bash benches/recover.sh 5
#
# PROFILE=release (default) builds release binaries; PROFILE=debug uses the debug build.
# The cluster is deployed first and destroyed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
c=${CLUSTER:-bench-recover}
profile=${PROFILE:-release}
out=${OUT:-/tmp/bench-recover.jsonl}
if [ "$profile" = release ]; then
  cargo build --release -q --bin coordinator --bin flotilla-agent
else
  cargo build -q --bin coordinator --bin flotilla-agent
fi
export FLOTILLA_STATE_DIR=${FLOTILLA_STATE_DIR:-$(mktemp -d)}
export FLOTILLA_LOG=${FLOTILLA_LOG:-warn}
bin=./target/$profile/coordinator
: > "$out"
$bin --cluster "$c" destroy --yes >/dev/null 2>&1 || true
trap '$bin --cluster "$c" destroy --yes >/dev/null 2>&1 || true' EXIT
$bin --cluster "$c" deploy --no-smoke-test --output json >/dev/null
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s.%N)
  $bin --cluster "$c" backup --output json >/tmp/bench-recover.json
  end=$(date +%s.%N)
  python3 - "$i" "$start" "$end" "$FLOTILLA_STATE_DIR/$c/backups" /tmp/bench-recover.json <<'PY' | tee -a "$out"
import json, os, sys
run, start, end, d = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
row = {"run": run, "wall_s": round(end - start, 2)}
for l in open(sys.argv[5]):
    b = json.loads(l)
    k = b["kind"]
    row[k + "_s"] = round(b["duration_ms"] / 1000, 2)
    row[k + "_bytes"] = b["size_bytes"]
    row[k + "_encrypted_bytes"] = os.path.getsize(b["path"])
print(json.dumps(row))
PY
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def cell(k, fmt):
    v = [r[k] for r in rows if k in r]
    return f"{fmt(statistics.median(v))} [{fmt(min(v))}–{fmt(max(v))}]" if v else "-"
s = lambda x: f"{x:.2f} s"
kb = lambda x: f"{x / 1024:.0f} KiB"
print(f"| measure ({len(rows)} backups) | median [min–max] |")
print("|---|---|")
print(f"| `coordinator backup` (Swarm + Consul), wall time | {cell('wall_s', s)} |")
print(f"| Swarm backup (Engine stopped, archived, restarted, node reachable again, stored) | {cell('swarm_s', s)} |")
print(f"| Consul snapshot (taken, uploaded, stored) | {cell('consul_s', s)} |")
print(f"| Swarm archive size (tar.gz of /var/lib/docker/swarm) | {cell('swarm_bytes', kb)} |")
print(f"| Swarm backup file (encrypted) | {cell('swarm_encrypted_bytes', kb)} |")
print(f"| Consul snapshot size | {cell('consul_bytes', kb)} |")
print(f"| Consul backup file (encrypted) | {cell('consul_encrypted_bytes', kb)} |")
PY

# recover: from a survivor, then from the backups.
leader=$($bin --cluster "$c" status --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["swarm"]["leader"])')
survivor=$(printf '%s\n' manager0 manager1 manager2 | grep -vx "$leader" | head -1)
gone=$(printf '%s\n' manager0 manager1 manager2 | grep -vx "$survivor")
for route in survivor restore; do
  if [ "$route" = restore ]; then gone="manager0 manager1 manager2"; fi
  for h in $gone; do docker rm -f "flotilla-$c-$h" >/dev/null; done
  start=$(date +%s.%N)
  $bin --cluster "$c" recover --yes --output json >/tmp/bench-recover-$route.json
  end=$(date +%s.%N)
  python3 - "$route" "$start" "$end" /tmp/bench-recover-$route.json <<'PY' | tee -a "$out"
import json, sys
route, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
r = json.load(open(sys.argv[4]))
print(json.dumps({"recover": route, "removed": [h["name"] for h in r["assessment"]["hosts"] if h["verdict"] != "healthy"],
                  "leader_s": round(r["leader_s"], 1), "full_strength_s": round(r["full_strength_s"], 1),
                  "wall_s": round(end - start, 1)}))
PY
done
