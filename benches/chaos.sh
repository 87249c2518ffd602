#!/usr/bin/env bash
# Benchmark: the chaos soak (issue 20). A default lab cluster (3 managers, 2 workers) with
# auto-heal on (grace 10 s), a web service with 2 replicas on the workers probed every 200 ms,
# a Consul KV writer (every 250 ms, acknowledged writes checked at the end), and a fault every
# EVERY seconds (default 30) picked by a seeded generator: agent SIGKILL, Engine SIGKILL, Consul
# container kill, host stopped, host removed, control-plane restart, a manager partitioned from
# the others (iptables inside its lab host). Bounded: MINUTES × 60 ÷ EVERY faults on a fixed
# schedule (a host-destroying fault first waits, at most 4 minutes, for the last one to be
# healed, so the run can last longer than MINUTES), then the cluster gets 5 minutes to be back
# at full strength.
#
#   bash benches/chaos.sh MINUTES [SEED]        (the seed is printed; pass it to reproduce)
#   EVERY=20 FAULTS=agent_kill,partition KEEP=1 bash benches/chaos.sh 10 42
#
# Prints a Markdown table (docs/BENCHMARKS.md) and writes chaos-report.json (CHAOS_JSON) and a
# trace of Consul's servers and each one's count of the writer's keys, every second
# (chaos-trace.log, CHAOS_TRACE).
# Exits 1 when an acknowledged write was lost or the cluster did not end at full strength.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash benches/chaos.sh MINUTES [SEED]" >&2; exit 64; }
[ -n "${SKIP_BUILD:-}" ] || cargo build -q --workspace --bins
target=${CARGO_TARGET_DIR:-./target}
echo "load before: $(cat /proc/loadavg)" >&2
"$target/debug/flotilla-chaos" "$@"
echo "load after: $(cat /proc/loadavg)" >&2
