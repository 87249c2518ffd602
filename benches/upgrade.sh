#!/usr/bin/env bash
# Benchmark: `coordinator upgrade` (issue 17) on one default lab cluster (3 managers with
# Consul, 2 nodes, a service of 2 replicas on the nodes).
#
# Agent only (part 2): RUNS upgrades one after another, each onto a different build (the agent
# binary with bytes appended — ELF ignores trailing data, so the SHA-256 differs): for each,
# the command's wall time, `total_s` from `upgrade --agent --output json`, and each host's
# seconds (request → its session back on the new build); then the containers' restarts
# across all runs (StartedAt and RestartCount of every running container on every host,
# compared before and after: expected 0). Prints each run as a JSON line (also kept in $OUT),
# then a Markdown table: median [min–max].
#
#   bash benches/upgrade.sh [RUNS]          (default: 3)
#   CLUSTER=name PROFILE=debug bash benches/upgrade.sh 3
#   SKIP_BUILD=1 CARGO_TARGET_DIR=… PROFILE=debug bash benches/upgrade.sh 3   (binaries as built)
#
# PROFILE=release (default) builds release binaries; PROFILE=debug uses the debug build (a
# 90 MB agent: the download dominates). The cluster is deployed first and destroyed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
c=${CLUSTER:-bench-upgrade}
profile=${PROFILE:-release}
out=${OUT:-/tmp/bench-upgrade.jsonl}
target=${CARGO_TARGET_DIR:-./target}
if [ -n "${SKIP_BUILD:-}" ]; then
  :  # binaries built already (e.g. under a shared build lock)
elif [ "$profile" = release ]; then
  cargo build --release -q --bin coordinator --bin flotilla-agent
else
  cargo build -q --bin coordinator --bin flotilla-agent
fi
export FLOTILLA_STATE_DIR=${FLOTILLA_STATE_DIR:-$(mktemp -d)}
export FLOTILLA_LOG=${FLOTILLA_LOG:-warn}
bin=$target/$profile/coordinator
agent=$target/$profile/flotilla-agent
work=$(mktemp -d)
: > "$out"
$bin --cluster "$c" destroy --yes >/dev/null 2>&1 || true
trap '$bin --cluster "$c" destroy --yes >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
$bin --cluster "$c" deploy --no-smoke-test --output json >/dev/null

# The service: 2 replicas on the nodes, from the lab registry.
m0=$($bin --cluster "$c" status --output json | python3 -c 'import json,sys; print([h for h in json.load(sys.stdin)["hosts"] if h["name"]=="manager0"][0]["addresses"][0])')
docker exec "flotilla-$c-manager0" docker service create --detach --name bench-keep --replicas 2 \
  --constraint node.role==worker "${m0%.*}.2:5000/flotilla/hello:1" sh -c 'while true; do sleep 1; done' >/dev/null
for _ in $(seq 1 180); do
  n=$(docker exec "flotilla-$c-manager0" docker service ps bench-keep --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running' || true)
  [ "$n" = 2 ] && break
  sleep 0.5
done

containers() {
  for h in manager0 manager1 manager2 node0 node1; do
    ids=$(docker exec "flotilla-$c-$h" docker ps -q)
    [ -z "$ids" ] && continue
    # shellcheck disable=SC2086
    docker exec "flotilla-$c-$h" docker inspect -f "$h{{.Name}} {{.State.StartedAt}} {{.RestartCount}}" $ids
  done | sort
}
containers > "$work/before"

for i in $(seq 1 "$RUNS"); do
  cp "$agent" "$work/flotilla-agent-$i"
  printf '\nbench build %s\n' "$i" >> "$work/flotilla-agent-$i"
  start=$(date +%s.%N)
  $bin --cluster "$c" upgrade --agent --binary "$work/flotilla-agent-$i" --output json > "$work/report.json"
  end=$(date +%s.%N)
  python3 - "$i" "$start" "$end" "$work/report.json" <<'PY' | tee -a "$out"
import json, sys
run, start, end = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
r = json.load(open(sys.argv[4]))
row = {"run": run, "wall_s": round(end - start, 2), "total_s": round(r["total_s"], 2), "upgraded": r["upgraded"]}
for h in r["hosts"]:
    row[h["host"] + "_s"] = round(h["seconds"], 2)
print(json.dumps(row))
PY
done
containers > "$work/after"
restarted=$(diff "$work/before" "$work/after" | grep -c '^>' || true)
echo "containers: $(wc -l < "$work/before") running before, $(wc -l < "$work/after") after, $restarted restarted or replaced"
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def cell(k):
    v = [r[k] for r in rows if k in r]
    return f"{statistics.median(v):.1f} s [{min(v):.1f}–{max(v):.1f}]" if v else "-"
print("| | median [min–max] |\n|---|---|")
for k in ["wall_s", "total_s"] + sorted(k for k in rows[0] if k.endswith("_s") and k not in ("wall_s", "total_s")):
    print(f"| {k} | {cell(k)} |")
PY
