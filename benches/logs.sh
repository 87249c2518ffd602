#!/usr/bin/env bash
# Benchmark: log streaming end to end (issue 19). A container on one lab worker writes
# LINES sequence-numbered lines of about 100 bytes as fast as it can; `coordinator logs -f`
# follows it (Engine → agent → control plane → CLI). Measured at the CLI's end: lines/s and
# MB/s from the first line to the last, lossless (every sequence number once, in order),
# the control plane's and the follower's peak RSS, and the cluster's heartbeat round trip
# p99 (from /metrics, `flotilla_heartbeat_round_trip_seconds`) before and while it runs.
# Bounded: LINES lines, and the follower is stopped after MAX_S seconds whatever happened.
#
#   bash benches/logs.sh [LINES]        (default 1000000 lines, ~100 MB)
#   CLUSTER=name PROFILE=debug KEEP=1 bash benches/logs.sh 500000
#   BIN=/path/to/coordinator bash benches/logs.sh        (no build)
#
# The cluster is deployed first (if it is not) and destroyed at the end unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-1000000}
MAX_S=${MAX_S:-120}
c=${CLUSTER:-bench-logs}
profile=${PROFILE:-release}
if [ -n "${BIN:-}" ]; then
  :  # a coordinator built elsewhere (its flotilla-agent beside it)
elif [ "$profile" = release ]; then
  cargo build --release -q --bin coordinator --bin flotilla-agent
else
  cargo build -q --bin coordinator --bin flotilla-agent
fi
export FLOTILLA_STATE_DIR=${FLOTILLA_STATE_DIR:-$(mktemp -d)}
export FLOTILLA_LOG=${FLOTILLA_LOG:-warn}
bin=${BIN:-$PWD/target/$profile/coordinator}
state=$FLOTILLA_STATE_DIR/$c
[ "${KEEP:-0}" = 1 ] || trap '$bin --cluster "$c" destroy --yes >/dev/null 2>&1 || true' EXIT
$bin --cluster "$c" status >/dev/null 2>&1 || $bin --cluster "$c" deploy --no-smoke-test --output json >/dev/null
host=node0
hc=flotilla-$c-$host
name=flotilla-logbench
image=$(docker exec "$hc" sh -c "docker images --format '{{.Repository}}:{{.Tag}}' | grep flotilla/hello | head -1")
if [ -z "$image" ]; then
  # Not pulled yet (a cluster deployed with --no-smoke-test): pulled here from the lab
  # registry the host's Engine trusts (its daemon.json), as the smoke test would.
  registry=$(docker exec "$hc" sed -n 's/.*"\([0-9.]*:5000\)".*/\1/p' /etc/docker/daemon.json | head -1)
  [ -n "$registry" ] || { echo "no lab registry in $host's /etc/docker/daemon.json" >&2; exit 1; }
  image=$registry/flotilla/hello:1
  docker exec "$hc" docker pull -q "$image" >/dev/null ||
    { echo "could not pull $image on $host" >&2; exit 1; }
fi
metrics=http://$(cat "$state/metrics-address")/metrics
cp_pid=$(pgrep -f -- "--cluster $c .*serve|serve .*--cluster $c" | head -1 || true)
[ -n "$cp_pid" ] || cp_pid=$(fuser "$state/admin.sock" 2>/dev/null | awk '{print $1}')
hist() { curl -s "$metrics" | grep '^flotilla_heartbeat_round_trip_seconds_bucket' || true; }
hist >/tmp/logbench-h0
docker exec "$hc" docker rm -f "$name" >/dev/null 2>&1 || true
# The writer waits for its follower: it starts once `logs -f` is attached (a marker file).
docker exec "$hc" docker create --name "$name" --log-driver json-file "$image" \
  sh -c "while [ ! -e /tmp/go ]; do sleep 0.05; done; exec awk -v n=$LINES 'BEGIN { pad = sprintf(\"%080d\", 0); for (i = 0; i < n; i++) printf \"%010d %s\\n\", i, pad }'" >/dev/null
docker exec "$hc" docker start "$name" >/dev/null
out=/tmp/logbench.out
( timeout "$MAX_S" "$bin" --cluster "$c" logs -f -c "$name" "$host" >"$out" 2>/tmp/logbench.err || true ) &
follower=$!
sleep 1
rss() { ps -o rss= -p "$1" 2>/dev/null | tr -d ' ' || echo 0; }
logs_pid=$(pgrep -n -f -- "logs -f -c $name" || echo "")
start=$(date +%s.%N)
docker exec "$hc" docker exec "$name" touch /tmp/go
peak_cp=0 peak_cli=0
while kill -0 "$follower" 2>/dev/null; do
  r=$(rss "$cp_pid"); [ "${r:-0}" -gt "$peak_cp" ] && peak_cp=$r
  [ -n "$logs_pid" ] && { r=$(rss "$logs_pid"); [ "${r:-0}" -gt "$peak_cli" ] && peak_cli=$r; }
  n=$(wc -l <"$out")
  [ "$n" -ge "$LINES" ] && break
  sleep 0.5
done
hist >/tmp/logbench-h1
kill "$follower" 2>/dev/null || true
pkill -f -- "logs -f -c $name" 2>/dev/null || true
wait "$follower" 2>/dev/null || true
docker exec "$hc" docker rm -f "$name" >/dev/null 2>&1 || true
python3 - "$out" "$LINES" "$start" "$peak_cp" "$peak_cli" /tmp/logbench-h0 /tmp/logbench-h1 <<'EOF'
import os, sys, time
out, lines, start, peak_cp, peak_cli, h0, h1 = sys.argv[1:]
lines, start = int(lines), float(start)
end = os.path.getmtime(out)
seen, dup, disorder, last, nbytes = 0, 0, 0, -1, 0
got = bytearray(lines)
with open(out, "rb") as f:
    for l in f:
        nbytes += len(l)
        body = l.split(b" | ", 1)[-1]
        try:
            i = int(body[:10])
        except ValueError:
            continue
        if i < lines:
            if got[i]:
                dup += 1
            got[i] = 1
        if i < last:
            disorder += 1
        last = i
        seen += 1
missing = lines - sum(got)
secs = end - start
def buckets(p):
    b = {}
    for l in open(p):
        le = l.split('le="')[1].split('"')[0]
        b[float("inf") if le == "+Inf" else float(le)] = float(l.rsplit(" ", 1)[1])
    return b
def p99(b):
    if not b:
        return None
    items = sorted(b.items())
    total = items[-1][1]
    if total <= 0:
        return None
    for le, n in items:
        if n >= 0.99 * total:
            return le
b0, b1 = buckets(h0), buckets(h1)
delta = {k: b1.get(k, 0) - b0.get(k, 0) for k in b1}
print(f"lines {seen} of {lines} (missing {missing}, duplicated {dup}, out of order {disorder})")
print(f"{secs:.2f} s: {seen / secs:,.0f} lines/s, {nbytes / secs / 1e6:.1f} MB/s at the follower ({nbytes / 1e6:.1f} MB with prefixes)")
print(f"peak RSS: control plane {int(peak_cp) / 1024:.0f} MiB, coordinator logs {int(peak_cli) / 1024:.0f} MiB")
print(f"heartbeat round trip p99 (bucket upper bound): before {p99(b0)} s, during {p99(delta)} s ({delta.get(float('inf'), 0):.0f} heartbeats)")
EOF
uptime
