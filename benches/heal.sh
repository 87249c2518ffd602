#!/usr/bin/env bash
# Benchmark: auto-heal (issue 15) on the default lab cluster (3 managers with Consul, 2
# nodes), auto-heal on with grace GRACE (default 60 s, the default setting). RUNS rounds, each
# round: "leader host terminated" (`failover-test --mode terminate`: the leader's container
# and volume removed, as an instance terminated) and "worker host terminated" (the worker's
# container and volume removed, status polled every 250 ms). Seconds from the fault to: a new
# leader (leader rounds), the host declared lost (auto-heal starts replacing it), the
# replacement launched, enrolled, and full strength (the heal's own verification: 3 managers,
# 1 leader, 2 workers ready, 3 Consul servers). Prints each round as a JSON line (kept in
# $OUT), then a Markdown table of median [min–max]. Target: full strength within grace + 30 s.
#
#   bash benches/heal.sh [RUNS]                 (default: 5 rounds)
#   GRACE=20 CLUSTER=name PROFILE=debug bash benches/heal.sh 3
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
c=${CLUSTER:-bench-heal}
grace=${GRACE:-60}
profile=${PROFILE:-release}
out=${OUT:-/tmp/bench-heal.jsonl}
if [ "$profile" = release ]; then
  cargo build --release -q --bin coordinator --bin flotilla-agent
else
  cargo build -q --bin coordinator --bin flotilla-agent
fi
export FLOTILLA_STATE_DIR=${FLOTILLA_STATE_DIR:-$(mktemp -d)}
export FLOTILLA_LOG=${FLOTILLA_LOG:-warn}
bin=./target/$profile/coordinator
: > "$out"
$bin --cluster "$c" destroy --yes --force >/dev/null 2>&1 || true
trap '$bin --cluster "$c" destroy --yes --force >/dev/null 2>&1 || true' EXIT
$bin --cluster "$c" deploy --no-smoke-test --heal auto --heal-grace "$grace" --output json >/dev/null
echo "machine load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# Waits until auto-heal has replaced HOST after a fault at FAULT_NS (ns since the epoch);
# prints the round's JSON line.
watch_heal() {
  local host=$1 fault_ns=$2 replaced_before=$3
  python3 - "$bin" "$c" "$host" "$fault_ns" "$replaced_before" <<'EOF'
import json, subprocess, sys, time
bin_, cluster, host, fault_ns, before = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t = lambda: (time.time_ns() - fault_ns) / 1e9
seen = {}
deadline = time.time() + 600
while time.time() < deadline:
    r = subprocess.run([bin_, "--cluster", cluster, "status", "--output", "json"], capture_output=True, text=True)
    try:
        st = json.loads(r.stdout)
    except ValueError:
        time.sleep(0.25); continue
    h = st.get("heal") or {}
    msg = h.get("message", "")
    if "lost_s" not in seen and msg.startswith(host + ": "):
        seen["lost_s"] = t()
    if "launched_s" not in seen and msg.startswith(host + ": ") and "launched replacement" in msg:
        seen["launched_s"] = t()
    mine = [x for x in st.get("hosts", []) if x["name"] == host]
    if "launched_s" in seen and "enrolled_s" not in seen and mine and mine[0]["connected"] and not mine[0]["unreachable"]:
        seen["enrolled_s"] = t()
    if h.get("replaced", 0) > before and h.get("state") != "healing":
        seen["full_strength_s"] = t()
        break
    time.sleep(0.25)
print(json.dumps({k: round(v, 2) for k, v in seen.items()}))
EOF
}

replaced() { $bin --cluster "$c" status --output json | python3 -c 'import json,sys; print((json.load(sys.stdin).get("heal") or {}).get("replaced",0))'; }

for i in $(seq 1 "$RUNS"); do
  $bin --cluster "$c" failover-test --mode terminate --output json 2>"/tmp/bench-heal-leader-$i.err" >/tmp/bench-heal.json || true
  python3 - "$i" /tmp/bench-heal.json <<'EOF' | tee -a "$out"
import json, sys
r = json.load(open(sys.argv[2]))
k = {"elect_s": "new_leader_s", "lost_s": "lost_s", "replacement_launched_s": "launched_s",
     "replacement_enrolled_s": "enrolled_s", "restore_s": "full_strength_s"}
print(json.dumps({"run": int(sys.argv[1]), "fault": "leader host terminated", "passed": r["passed"],
                  **{v: (round(r[x], 2) if r.get(x) is not None else None) for x, v in k.items()}}))
EOF
  worker=node$(( (i - 1) % 2 ))
  before=$(replaced)
  fault_ns=$(date +%s%N)
  docker rm -f "flotilla-$c-$worker" >/dev/null
  docker volume rm -f "flotilla-$c-$worker-docker" >/dev/null 2>&1 || true
  line=$(watch_heal "$worker" "$fault_ns" "$before")
  python3 -c 'import json,sys; d=json.loads(sys.argv[2]); print(json.dumps({"run": int(sys.argv[1]), "fault": "worker host terminated", "passed": "full_strength_s" in d, **d}))' "$i" "$line" | tee -a "$out"
done
echo "machine load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$out" "$grace" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
grace = float(sys.argv[2])
def cell(vals):
    vals = [v for v in vals if v is not None]
    return f"{statistics.median(vals):.1f} [{min(vals):.1f}–{max(vals):.1f}]" if vals else "-"
print(f"| fault (grace {grace:.0f} s) | passed | new leader | declared lost | replacement launched | enrolled | full strength | within grace + 30 s |")
print("|---|---|---|---|---|---|---|---|")
for fault in ["leader host terminated", "worker host terminated"]:
    rs = [r for r in rows if r["fault"] == fault]
    if not rs:
        continue
    col = lambda k: cell([r.get(k) for r in rs if r["passed"]])
    ok = sum(1 for r in rs if r["passed"] and r.get("full_strength_s") is not None and r["full_strength_s"] <= grace + 30)
    print(f"| {fault} | {sum(r['passed'] for r in rs)}/{len(rs)} | {col('new_leader_s')} | {col('lost_s')} | {col('launched_s')} | {col('enrolled_s')} | {col('full_strength_s')} | {ok}/{len(rs)} |")
EOF
