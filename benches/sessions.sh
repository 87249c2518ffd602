#!/usr/bin/env bash
# Benchmark: N simulated agents (separate process) against one control plane — enrollment
# rate, session count, heartbeat round trip, coordinator CPU and RSS. Loopback only.
#
#   bash benches/sessions.sh [AGENTS] [STEADY_SECONDS]      (defaults: 10000 60)
#
# Results go to stdout as JSON; copy them into docs/BENCHMARKS.md with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${1:-10000}
STEADY=${2:-60}
PORT=${FLOTILLA_BENCH_PORT:-17443}
cargo build --release -q --bin coordinator --bin flotilla-loadgen
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'kill "$coord" 2>/dev/null || true; wait "$coord" 2>/dev/null || true; rm -rf "$work"' EXIT
FLOTILLA_LOG=warn ./target/release/coordinator --cluster bench --state-root "$work" \
  serve --listen "127.0.0.1:$PORT" --heartbeat-interval 5s &
coord=$!
for _ in $(seq 1 200); do [ -S "$work/bench/admin.sock" ] && break; sleep 0.05; done
[ -S "$work/bench/admin.sock" ] || { echo "control plane did not start" >&2; exit 1; }
./target/release/flotilla-loadgen --state-dir "$work/bench" --endpoint "127.0.0.1:$PORT" \
  --agents "$AGENTS" --concurrency 64 --heartbeat-s 5 --steady-s "$STEADY" --coordinator-pid "$coord"
