#!/usr/bin/env bash
# Benchmark: deploy the default 5-host cluster on the lab (command → verified + smoke test),
# re-deploy (no-op), destroy. Release build; images cached unless --cold (then the lab
# images are removed first and rebuilt from Debian packages by the deploy itself).
#
#   bash benches/deploy.sh [--cold] [RUNS]        (default: 3 runs)
#   SKIP_BUILD=1 CARGO_TARGET_DIR=… bash benches/deploy.sh 5   (release binaries built already,
#                                                               e.g. under a shared build lock)
#
# Each run's progress lines (the timeline: `[ 12.3s] host  message`) are kept in
# $LOGS/run-N.log (default: a fresh temporary directory, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
cold=0
if [ "${1:-}" = "--cold" ]; then cold=1; shift; fi
RUNS=${1:-3}
target=${CARGO_TARGET_DIR:-./target}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q --bin coordinator --bin flotilla-agent
export FLOTILLA_STATE_DIR=${FLOTILLA_STATE_DIR:-$(mktemp -d)}
logs=${LOGS:-$(mktemp -d)}
bin=$target/release/coordinator
c=bench-deploy
secs() { date +%s.%N; }
$bin --cluster $c destroy --yes >/dev/null 2>&1 || true
for i in $(seq 1 "$RUNS"); do
  if [ $cold = 1 ]; then
    docker images --format '{{.Repository}}:{{.Tag}}' | grep '^flotilla/lab-' | xargs -r docker rmi -f >/dev/null
  fi
  t0=$(secs); $bin --cluster $c deploy > "$logs/run-$i.out" 2>"$logs/run-$i.log"; t1=$(secs)
  $bin --cluster $c deploy --output json > /tmp/bench-redeploy.json 2>/dev/null; t2=$(secs)
  $bin --cluster $c destroy --yes >/dev/null 2>&1; t3=$(secs)
  changed=$(python3 -c 'import json;print(json.load(open("/tmp/bench-redeploy.json"))["changed"])')
  python3 -c "import json,sys; t=[float(x) for x in sys.argv[1:5]]; print(json.dumps({'run': $i, 'cold': bool($cold), 'deploy_s': round(t[1]-t[0],1), 'redeploy_s': round(t[2]-t[1],2), 'redeploy_changed': '$changed'=='True', 'destroy_s': round(t[3]-t[2],1)}))" "$t0" "$t1" "$t2" "$t3"
done
echo "timelines: $logs/run-*.log" >&2
