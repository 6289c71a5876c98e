#!/usr/bin/env bash
# Server-Sent Events next to WebSocket (docs/benchmarks.md, "SSE next to
# WebSocket"): fan-out to N WebSocket members, then to N SSE streams, in the
# same room sizes and paces (switchboard-bench `--only sse`), RUNS times
# against one node; then the idle-memory probe at PROBE_N connections and
# PROBE_N streams, a fresh node each (benches/probe/run.sh ... ws,sse).
# Writes benches/results/sse.json and prints the tables.
#   benches/sse.sh [--quick]      (env: RUNS=3 PROBE_N=8000)
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
RUNS=${RUNS:-3}; PROBE_N=${PROBE_N:-8000}
TARGET=${CARGO_TARGET_DIR:-target}
source benches/lib.sh

echo "== build"
cargo build --release --quiet -p switchboard-gateway -p switchboard-bench

echo "== start switchboard"
SWITCHBOARD__HTTP__LISTEN=127.0.0.1:18080 \
SWITCHBOARD__LIMITS__PUBLISH_PER_S=1000000 \
SWITCHBOARD__LIMITS__PUBLISH_BURST=1000000 \
SWITCHBOARD__LIMITS__OUTBOUND_QUEUE=65536 \
SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS=1000000 \
SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS=1000000 \
RUST_LOG=warn "$TARGET/release/switchboard" & SB=$!; PIDS+=("$SB")
wait_http 127.0.0.1:18080
for i in $(seq "$RUNS"); do
  "$TARGET/release/switchboard-bench" run $QUICK --only sse \
    --switchboard 127.0.0.1:18080 --switchboard-pid "$SB" \
    --out "$WORK/sse-fanout-$i.json"
done
kill "$SB" 2>/dev/null || true

echo "== idle memory: $PROBE_N WebSocket connections, then $PROBE_N SSE streams"
benches/probe/run.sh "$TARGET/release/switchboard" "$PROBE_N" 5 ws,sse | tee "$WORK/sse-probe.txt"

python3 - "$WORK" "$RUNS" "$QUICK" <<'PY'
import json, re, subprocess, sys, platform, os
work, runs, quick = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "--quick"
fan = [json.load(open(f"{work}/sse-fanout-{i}.json"))["scenarios"] for i in range(1, runs + 1)]
probe = open(f"{work}/sse-probe.txt").read()
git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
doc = {"quick": quick, "git": git, "cpus": os.cpu_count(), "kernel": platform.release(),
       "fanout_runs": fan, "probe": probe.splitlines()}
json.dump(doc, open("benches/results/sse.json", "w"), indent=1)
def fmt(v):
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.2f}")
print("\n| members | pace | transport | deliveries/s (runs) | server CPU µs/delivery | p50 ms | p99 ms | lost | reordered |")
print("|---|---|---|---|---|---|---|---|---|")
keys = [(r["members"], r["pace"], r["transport"]) for r in fan[0]]
for k in keys:
    rs = [r for run in fan for r in run if (r["members"], r["pace"], r["transport"]) == k]
    j = lambda f: " / ".join(fmt(r.get(f)) for r in rs)
    print(f"| {k[0]} | {k[1]} | {k[2]} | {j('deliveries_per_s')} | {j('server_cpu_us_per_delivery')} | {j('p50_ms')} | {j('p99_ms')} | {j('lost')} | {j('reordered')} |")
PY
echo "== wrote benches/results/sse.json"
