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
# Image (part 1), after the agent runs unless IMAGE_RUN=0: the cluster is upgraded to an image
# baked from the lab host image (`coordinator bake`), all 5 hosts replaced add-before-remove,
# while a probe (every ~0.3 s, through whichever manager's Engine exists) records the swarm's
# leader and the service's running replicas: total and per-host seconds from `upgrade --image
# --output json`, the longest run of looks without a leader, the fewest running replicas.
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

# The probe: one line per look, "<unix seconds> <leader 0|1> <running replicas>".
probe() {
  local m leader running answered
  while [ ! -e "$work/stop" ]; do
    leader=0; running=0
    # The first manager container whose Engine answers as a manager (one being replaced may
    # have left the swarm already: it answers "not a swarm manager", which is no verdict).
    for m in $(docker ps --format '{{.Names}}' --filter "name=^flotilla-$c-manager"); do
      answered=$(docker exec "$m" timeout 2 docker node ls --format '{{.ManagerStatus}}' 2>/dev/null) || continue
      grep -q Leader <<<"$answered" && leader=1
      running=$(docker exec "$m" timeout 2 docker service ps bench-keep --filter desired-state=running \
        --format '{{.CurrentState}}' 2>/dev/null | grep -c '^Running' || true)
      break
    done
    echo "$(date +%s.%N) $leader $running"
    sleep 0.3
  done
}

image_run() {
  local image
  image=$($bin --cluster "$c" bake --name flotilla-bench/upgrade --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"])')
  rm -f "$work/stop"; probe > "$work/probe" & local probe_pid=$!
  local start end
  start=$(date +%s.%N)
  $bin --cluster "$c" upgrade --image "$image" --output json > "$work/image.json"
  end=$(date +%s.%N)
  touch "$work/stop"; wait "$probe_pid" || true
  python3 - "$start" "$end" "$work/image.json" "$work/probe" <<'PY' | tee -a "$out"
import json, sys
start, end = float(sys.argv[1]), float(sys.argv[2])
r = json.load(open(sys.argv[3]))
looks = [l.split() for l in open(sys.argv[4]) if len(l.split()) == 3]
longest, since = 0.0, None
for t, leader, _ in looks:
    if leader == "0":
        since = since if since is not None else float(t)
        longest = max(longest, float(t) - since)
    else:
        since = None
row = {"image": r["target_image"], "wall_s": round(end - start, 2), "total_s": round(r["total_s"], 2), "looks": len(looks),
       "longest_leaderless_s": round(longest, 2), "min_running": min((int(x[2]) for x in looks), default=-1)}
for h in r["replaced"]:
    row[h["old"] + "_s"] = round(h["seconds"], 2)
print(json.dumps(row))
PY
}

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
[ "${IMAGE_RUN:-1}" = 0 ] || image_run

python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"image"' not in l]
def cell(k):
    v = [r[k] for r in rows if k in r]
    return f"{statistics.median(v):.1f} s [{min(v):.1f}–{max(v):.1f}]" if v else "-"
print("| | median [min–max] |\n|---|---|")
for k in ["wall_s", "total_s"] + sorted(k for k in rows[0] if k.endswith("_s") and k not in ("wall_s", "total_s")):
    print(f"| {k} | {cell(k)} |")
PY
