#!/usr/bin/env bash
# Benchmark: the failover drill (issue 7) on one default lab cluster (3 managers with
# Consul, 2 nodes): RUNS rounds, each round one drill of every kind in turn — swarm/engine,
# swarm/host, swarm/handover (planned, issue 19), consul/engine, consul/host, node/host (a
# worker's tasks moved, issue 19) — so load changes spread over all of them (KINDS="…"
# picks some). Prints each drill's figures as a JSON line (also kept in $OUT), then a
# Markdown table: median [min–max] of detect, elect, seconds without a leader, API back,
# the workload whole again, rejoin, and how long after the component's own logged election
# the drill saw the new leader.
#
#   bash benches/failover.sh [RUNS]          (default: 5 rounds)
#   CLUSTER=name PROFILE=debug bash benches/failover.sh 5
#
# PROFILE=release (default) builds release binaries; PROFILE=debug uses the debug build
# (the drill's times are the cluster's, not the CLI's). The cluster is deployed first and
# destroyed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
c=${CLUSTER:-bench-failover}
profile=${PROFILE:-release}
out=${OUT:-/tmp/bench-failover.jsonl}
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
  for kind in ${KINDS:-swarm/engine swarm/host swarm/handover consul/engine consul/host node/host}; do
    comp=${kind%/*} mode=${kind#*/}
    # A drill that fails still prints its report; it is counted as not passed.
    $bin --cluster "$c" failover-test --component "$comp" --mode "$mode" --output json \
      2>"/tmp/bench-failover-$comp-$mode-$i.err" >/tmp/bench-failover.json || true
    python3 - "$i" "$comp" "$mode" /tmp/bench-failover.json <<'EOF' | tee -a "$out"
import json, sys
r = json.load(open(sys.argv[4]))
keys = ["detect_s", "elect_s", "leaderless_s", "api_back_s", "workload_s", "rejoin_s", "report_lag_s", "control_plane_detect_s"]
print(json.dumps({"run": int(sys.argv[1]), "component": sys.argv[2], "mode": sys.argv[3], "passed": r["passed"],
                  "old_leader": r["old_leader"], "new_leader": r["new_leader"],
                  **{k: (round(r[k], 2) if r.get(k) is not None else None) for k in keys}}))
EOF
  done
done
python3 - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{statistics.median(vals):.2f} [{min(vals):.2f}–{max(vals):.2f}]"
print("| drill | passed | detect | new leader elected | without a leader | API back | workload whole | rejoin (from the restore) | seen after the logged election |")
print("|---|---|---|---|---|---|---|---|---|")
for kind in ["swarm/engine", "swarm/host", "swarm/handover", "consul/engine", "consul/host", "node/host"]:
    comp, mode = kind.split("/")
    rs = [r for r in rows if r["component"] == comp and r["mode"] == mode]
    if not rs:
        continue
    col = lambda k: cell([r[k] for r in rs if r["passed"]])
    print(f"| {kind} | {sum(r['passed'] for r in rs)}/{len(rs)} | {col('detect_s')} | {col('elect_s')} | {col('leaderless_s')} | {col('api_back_s')} | {col('workload_s')} | {col('rejoin_s')} | {col('report_lag_s')} |")
EOF
