#!/usr/bin/env bash
# The reconnect storm (issue 14 item 4): a 2-node cluster; N clients (default
# 20,000, half on each node, in worker processes of at most 9,000
# connections) joined to one of 100 rooms with `presence: false`, and 1,000
# "staying" clients on the first node receiving 50 publications a second.
# The storm: every storm client's socket drops at the same instant (a load
# balancer or network reset) and all N reconnect to their node at once,
# following the server's policy (first attempt at once; on 503 the
# Retry-After it names plus up to 250 ms; on other failures full-jitter
# backoff from `hello`, base 500 ms, cap 30 s) and rejoin their room.
# With --kill the second node is also killed (-9) and its clients come back
# to the first (use --clients 16000 or fewer: a process here holds at most
# 20,000 open files). Recorded: the time until all N are back and joined,
# each client's reconnect time, the 503s answered, the staying clients'
# publish-to-delivery latency before / during / after, and server CPU.
# Run with the default limits.connects_per_s / connect_burst ("default"),
# with the limit effectively off ("off"), or with both set to a number
# (e.g. --modes 2000), RUNS times each, alternating.
#   benches/storm.sh [--quick] [--runs N] [--clients N] [--kill] [--modes "default off"]
# Rows go to benches/results/storm.json; the table in docs/benchmarks.md
# ("Reconnect storm") is written by hand from them.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0; RUNS=3; CLIENTS=20000; KILL=""; MODES="default off"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; RUNS=1; CLIENTS=6000 ;;
    --runs) RUNS="$2"; shift ;;
    --clients) CLIENTS="$2"; shift ;;
    --kill) KILL="--kill-second" ;;
    --modes) MODES="$2"; shift ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
  shift
done
TARGET="${CARGO_TARGET_DIR:-target}"
source benches/lib.sh
cargo build --release --quiet -p switchboard-gateway -p switchboard-bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
ROWS=()

for run in $(seq "$RUNS"); do
  for mode in $MODES; do
    echo "== run $run, limits.connects_per_s: $mode"
    ADDRS=(); NODE_PIDS=()
    for i in 0 1; do
      if [ "$mode" = "off" ]; then
        export SWITCHBOARD__LIMITS__CONNECTS_PER_S=1000000 SWITCHBOARD__LIMITS__CONNECT_BURST=1000000
      elif [ "$mode" != "default" ]; then
        # A number: connects_per_s and connect_burst both set to it.
        export SWITCHBOARD__LIMITS__CONNECTS_PER_S="$mode" SWITCHBOARD__LIMITS__CONNECT_BURST="$mode"
      else
        unset SWITCHBOARD__LIMITS__CONNECTS_PER_S SWITCHBOARD__LIMITS__CONNECT_BURST
      fi
      SWITCHBOARD__NODE__NAME="storm-$i" \
      SWITCHBOARD__HTTP__LISTEN="127.0.0.1:1859$i" \
      SWITCHBOARD__CLUSTER__LISTEN="127.0.0.1:1869$i" \
      SWITCHBOARD__CLUSTER__SEEDS="127.0.0.1:18690,127.0.0.1:18691" \
      SWITCHBOARD__LIMITS__PUBLISH_PER_S=1000000 \
      SWITCHBOARD__LIMITS__PUBLISH_BURST=1000000 \
      SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS=1000000 \
      SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS=1000000 \
      RUST_LOG=warn "$TARGET/release/switchboard" 2>"$WORK/storm-$mode-$run-node-$i.log" & p=$!
      PIDS+=("$p"); NODE_PIDS+=("$p"); ADDRS+=("127.0.0.1:1859$i")
    done
    unset SWITCHBOARD__LIMITS__CONNECTS_PER_S SWITCHBOARD__LIMITS__CONNECT_BURST
    for a in "${ADDRS[@]}"; do wait_http "$a"; done
    for _ in $(seq 100); do
      n=$(curl -sf "http://${ADDRS[0]}/metrics" | awk '/^switchboard_cluster_nodes /{print $2}')
      [ "$n" = "2" ] && break; sleep 0.1
    done
    OUT="$WORK/storm-$STAMP-$mode-$run.json"
    if [ "$QUICK" = 1 ]; then EXTRA=(--staying 300 --before-s 5 --after-s 3); else EXTRA=(); fi
    "$TARGET/release/switchboard-bench" storm --nodes "$(join "${ADDRS[@]}")" --pids "$(join "${NODE_PIDS[@]}")" \
      --clients "$CLIENTS" $KILL --label "$mode" --out "$OUT" "${EXTRA[@]}"
    ROWS+=("$OUT")
    for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    sleep 2
  done
done

python3 - "$STAMP" "${ROWS[@]}" <<'PY'
import json, os, sys, platform
stamp, files = sys.argv[1], sys.argv[2:]
rows = [json.load(open(f)) for f in files]
path = "benches/results/storm.json"
doc = json.load(open(path)) if os.path.exists(path) else {"runs": []}
doc["runs"].append({"stamp": stamp, "rows": rows})
json.dump(doc, open(path, "w"), indent=2)
print(f"{'limit':8} {'back':>6} {'all back s':>10} {'p50 ms':>8} {'p99 ms':>8} {'503s':>7} "
      f"{'stay p99 before':>15} {'during p50/p99/max':>22} {'lost':>5} {'cores':>5}")
for r in rows:
    b, d = r["latency_before"], r["latency_during"]
    print(f"{r['label']:8} {r['back']:>6} {r['recovery_s']:>10.2f} {r['reconnect_p50_ms']:>8.0f} "
          f"{r['reconnect_p99_ms']:>8.0f} {r['refused_503']:>7} {b['p99_ms']:>15.1f} "
          f"{d['p50_ms']:>6.1f}/{d['p99_ms']:.1f}/{d['max_ms']:.1f} {r['lost']:>5} {r['server_cores_during']:>5.2f}")
PY
