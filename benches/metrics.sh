#!/usr/bin/env bash
# Benchmark (issue 18): the cost of a Prometheus scrape of a control plane with N simulated
# agents (benches/sessions.sh's load generator: real enrollment, real mTLS sessions, a health
# sample every 5 s each). Measures `/metrics` response time and size, and the coordinator's
# CPU over a window without scrapes and over a window scraped every 15 s. Loopback only.
#
#   bash benches/metrics.sh [AGENTS] [WINDOW_SECONDS]        (defaults: 10000 60)
#   FLOTILLA_BENCH_PROFILE=debug bash benches/metrics.sh ...  (a debug build: an upper bound)
#   FLOTILLA_BENCH_NO_BUILD=1 ...                              (use the binaries already built)
#   FLOTILLA_BENCH_TMPDIR=DIR ...    where the control plane's state goes (default: /dev/shm)
#
# The state lives on tmpfs by default: the setup's fsyncs (a commit per token minted, per
# enrollment) then cost nothing, where a loaded disk made minting 10,000 tokens take minutes;
# a scrape only reads, so what is measured does not change. Production code is the same.
# Readiness is the load generator's own "N sessions open" line, so no scrape of 10,000
# hosts runs before the measured windows.
#
# Prints one JSON object; copy it into docs/BENCHMARKS.md with the machine and its load.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-10000}
WINDOW=${2:-60}
INTERVAL=15
PORT=${FLOTILLA_BENCH_PORT:-17443}
MPORT=${FLOTILLA_BENCH_METRICS_PORT:-17464}
PROFILE=${FLOTILLA_BENCH_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -n "${FLOTILLA_BENCH_NO_BUILD:-}" ]; then
  :   # built already (e.g. under a shared build lock)
elif [ "$PROFILE" = release ]; then
  cargo build --release -q --bin coordinator --bin flotilla-loadgen
else
  cargo build -q --bin coordinator --bin flotilla-loadgen
fi
BIN="$TARGET/$PROFILE"
ulimit -n "$(ulimit -Hn)"
TMPBASE=${FLOTILLA_BENCH_TMPDIR:-/dev/shm}
[ -d "$TMPBASE" ] && [ -w "$TMPBASE" ] || TMPBASE=${TMPDIR:-/tmp}
work=$(mktemp -d "$TMPBASE/flotilla-bench.XXXXXX")
trap 'kill "$load" 2>/dev/null || true; kill "$coord" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
FLOTILLA_LOG=warn "$BIN/coordinator" --cluster bench --state-root "$work" \
  serve --listen "127.0.0.1:$PORT" --metrics-listen "127.0.0.1:$MPORT" --heartbeat-interval 5s &
coord=$!
for _ in $(seq 1 200); do [ -S "$work/bench/admin.sock" ] && break; sleep 0.05; done
[ -S "$work/bench/admin.sock" ] || { echo "control plane did not start" >&2; exit 1; }
# The load generator heartbeats through both windows (plus room to connect everyone).
"$BIN/flotilla-loadgen" --state-dir "$work/bench" --endpoint "127.0.0.1:$PORT" \
  --agents "$AGENTS" --concurrency 64 --heartbeat-s 5 --steady-s $((2 * WINDOW + 30)) >"$work/loadgen.json" 2>"$work/loadgen.log" &
load=$!
url="http://127.0.0.1:$MPORT/metrics"
# The load generator says "N sessions open in S s" once every enrolled agent's session is
# up (or its wait for the last ones ran out); bounded at 20 minutes.
for _ in $(seq 1 2400); do
  grep -q 'sessions open in' "$work/loadgen.log" && break
  kill -0 "$load" 2>/dev/null || { cat "$work/loadgen.log" >&2; echo "the load generator exited" >&2; exit 1; }
  sleep 0.5
done
cat "$work/loadgen.log" >&2
sessions() { curl -sf "$url" | awk '$1 == "flotilla_sessions_open" { print int($2) }'; }
open_now=$(sessions || echo 0)
[ "$open_now" -ge "$AGENTS" ] || { echo "only $open_now sessions open" >&2; exit 1; }
sleep 10   # every agent has sent a sample
ticks() { awk '{ print $14 + $15 }' "/proc/$coord/stat"; }
hz=$(getconf CLK_TCK)
# Window A: no scrapes.
a0=$(ticks); sleep "$WINDOW"; a1=$(ticks)
# Window B: a Prometheus-like scrape (OpenMetrics) every 15 s.
b0=$(ticks); start=$(date +%s.%N); times=(); sizes=()
for i in $(seq 0 $((WINDOW / INTERVAL - 1))); do
  at=$(echo "$start + $i * $INTERVAL" | bc); now=$(date +%s.%N)
  wait_s=$(echo "$at - $now" | bc); case "$wait_s" in -*|0) ;; *) sleep "$wait_s" ;; esac
  t0=$(ticks)
  read -r t s < <(curl -sf -o /dev/null -H 'Accept: application/openmetrics-text; version=1.0.0' \
    -w '%{time_total} %{size_download}\n' "$url")
  scrape_ticks=$(( ${scrape_ticks:-0} + $(ticks) - t0 ))
  times+=("$t"); sizes+=("$s")
done
end=$(echo "$start + $WINDOW" | bc); now=$(date +%s.%N)
wait_s=$(echo "$end - $now" | bc); case "$wait_s" in -*|0) ;; *) sleep "$wait_s" ;; esac
b1=$(ticks)
series=$(curl -sf "$url" | grep -vc '^#')
python3 - "$AGENTS" "$WINDOW" "$hz" "$a0" "$a1" "$b0" "$b1" "$series" "$PROFILE" "${times[*]}" "${sizes[*]}" "$scrape_ticks" <<'PY'
import json, sys
agents, window, hz, a0, a1, b0, b1, series = map(int, sys.argv[1:9])
profile, times, sizes = sys.argv[9], [float(t) for t in sys.argv[10].split()], [int(s) for s in sys.argv[11].split()]
scrape_ticks = int(sys.argv[12])
cpu = lambda t0, t1: 100.0 * (t1 - t0) / hz / window
print(json.dumps({
    "agents": agents, "profile": profile, "window_s": window, "scrape_interval_s": 15,
    "scrape_ms": [round(t * 1000, 1) for t in times], "scrape_ms_max": round(max(times) * 1000, 1),
    "response_bytes": max(sizes), "series": series,
    "cpu_percent_of_one_core_without_scrapes": round(cpu(a0, a1), 2),
    "cpu_percent_of_one_core_with_scrapes": round(cpu(b0, b1), 2),
    "extra_cpu_percent": round(cpu(b0, b1) - cpu(a0, a1), 2),
    # CPU the coordinator used while each scrape was in flight (heartbeats included: an
    # upper bound on the scrapes' own), as a share of one core over the window.
    "cpu_during_scrapes_percent_upper_bound": round(100.0 * scrape_ticks / hz / window, 2),
    "cpu_ms_per_scrape_upper_bound": round(1000.0 * scrape_ticks / hz / len(times), 1),
    "load_average": open("/proc/loadavg").read().split()[:3],
}, indent=1))
PY
