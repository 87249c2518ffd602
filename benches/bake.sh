#!/usr/bin/env bash
# Benchmark (issue 8): bake a lab host image (then again: the reuse), and deploy the default
# cluster (3 managers, 2 nodes) from the plain lab host image and from the baked one, in the same
# run on the same machine, alternating (plain, baked, plain, baked, ...) so drift hits both.
# Release build; lab images cached. Uses the lab clusters `bake` (the bake's builder) and `baked`
# (the deploys): do not run it alongside `cargo nextest run --test bake`.
#
#   bash benches/bake.sh [RUNS]        (default: 3 runs of each)
#
# One JSON line per measurement on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release -q --bin coordinator --bin flotilla-agent
export FLOTILLA_STATE_DIR=${FLOTILLA_STATE_DIR:-$(mktemp -d)}
bin=./target/release/coordinator
name=flotilla-bench/baked
c=baked
secs() { date +%s.%N; }
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
$bin --cluster $c destroy --yes >/dev/null 2>&1 || true
# This benchmark's own images only: the first bake below is a real one.
docker images --format '{{.Repository}}:{{.Tag}}' --filter "reference=$name" | xargs -r docker rmi -f >/dev/null

t0=$(secs); $bin --cluster bake bake --name $name --output json >/tmp/bench-bake.json 2>/tmp/bench-bake.err; t1=$(secs)
$bin --cluster bake bake --name $name --output json >/tmp/bench-rebake.json 2>/dev/null; t2=$(secs)
image=$(json /tmp/bench-bake.json image)
python3 -c "import sys,json; t=[float(x) for x in sys.argv[1:4]]; print(json.dumps({'bake_s': round(t[1]-t[0],1), 'rebake_s': round(t[2]-t[1],1), 'rebake_reused': sys.argv[4]=='True', 'image': sys.argv[5]}))" \
  "$t0" "$t1" "$t2" "$(json /tmp/bench-rebake.json reused)" "$image"

for i in $(seq 1 "$RUNS"); do
  for kind in plain baked; do
    args=(deploy)
    if [ $kind = baked ]; then args+=(--image "$image"); fi
    # Table output: deploy's timeline goes to stderr (with --output json it is quiet).
    t0=$(secs); $bin --cluster $c "${args[@]}" >/tmp/bench-bake-deploy.out 2>/tmp/bench-bake-deploy.err; t1=$(secs)
    # Hosts launched → every agent enrolled and connected (deploy's own timeline).
    enrolled=$(python3 - /tmp/bench-bake-deploy.err <<'PY'
import re, sys
t_launch = t_ready = None
for line in open(sys.argv[1]):
    m = re.match(r"\[\s*([\d.]+)s\] (\S+)\s+(.*)", line)
    if not m: continue
    t, who, what = float(m.group(1)), m.group(2), m.group(3)
    if who == "hosts" and what.startswith("launching"): t_launch = t
    if who == "wait" and what.startswith("every role running"): t_ready = t
print(round(t_ready - t_launch, 1) if t_launch is not None and t_ready is not None else "null")
PY
)
    load=$(cut -d' ' -f1 /proc/loadavg)
    # The work a baked image skips, measured directly on a plain host: fetching the agent from
    # the control plane (pinned to the cluster CA) and checking its digest.
    fetch=null
    if [ $kind = plain ]; then
      fetch=$(docker exec flotilla-$c-node0 sh -c '
        ep=$(sed -n "s/^coordinator = \[\"\([^\"]*\)\".*/\1/p" /etc/flotilla/agent.toml)
        s=$(date +%s.%N)
        curl -fsS --cacert /etc/flotilla/ca.pem -o /tmp/agent.bench "https://$ep/v1/agent/flotilla-agent"
        sha256sum /tmp/agent.bench >/dev/null
        e=$(date +%s.%N); rm -f /tmp/agent.bench
        awk "BEGIN{printf \"%.2f\", $e - $s}"')
    fi
    # Per host: how long cloud-init's user scripts (the bootstrap: Engine config, agent install
    # or skip, agent start) ran, from each host's /var/log/cloud-init.log; the median of five.
    bootstrap=$(for h in manager0 manager1 manager2 node0 node1; do
        docker exec flotilla-$c-$h grep 'modules-final/config-scripts-user' /var/log/cloud-init.log
        echo ---
      done | python3 -c '
import sys, datetime, statistics
durs, start = [], None
for line in sys.stdin:
    if line.startswith("---"): start = None; continue
    t = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    if "start: modules-final/config-scripts-user" in line: start = t
    elif "finish: modules-final/config-scripts-user" in line and start: durs.append((t - start).total_seconds())
print(round(statistics.median(durs), 2) if len(durs) == 5 else "null")')
    skipped=$(docker exec flotilla-$c-node0 grep -c 'download skipped' /var/log/cloud-init-output.log || true)
    $bin --cluster $c destroy --yes >/dev/null 2>&1
    python3 -c "import json,sys; t=[float(x) for x in sys.argv[1:3]]; print(json.dumps({'run': int(sys.argv[3]), 'image': sys.argv[4], 'deploy_s': round(t[1]-t[0],1), 'launch_to_enrolled_s': json.loads(sys.argv[5]), 'bootstrap_median_s': json.loads(sys.argv[8]), 'agent_fetch_and_check_s': json.loads(sys.argv[9]), 'agent_download_skipped': sys.argv[6]=='1', 'load1_after': float(sys.argv[7])}))" \
      "$t0" "$t1" "$i" "$kind" "$enrolled" "$skipped" "$load" "$bootstrap" "$fetch"
  done
done
