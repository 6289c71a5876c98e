#!/usr/bin/env bash
# The cost of replication on cross-node fan-out: three Switchboard nodes
# with cluster.replicas = 1, then 2 (every message held by the home's
# follower before it is released), the same cross-node scenario on each.
# Prints deliveries/s and p99 per setting; the figures go to
# docs/benchmarks.md by hand ("Replication").
#   benches/replication.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
source benches/lib.sh
cargo build --release --quiet -p switchboard-gateway -p switchboard-bench

for replicas in 1 2; do
  echo "== three nodes, cluster.replicas = $replicas"
  ADDRS=(); NODE_PIDS=()
  for i in 0 1 2; do
    SWITCHBOARD__NODE__NAME="repl-$i" \
    SWITCHBOARD__HTTP__LISTEN="127.0.0.1:1839$i" \
    SWITCHBOARD__CLUSTER__LISTEN="127.0.0.1:1849$i" \
    SWITCHBOARD__CLUSTER__SEEDS="127.0.0.1:18490,127.0.0.1:18491,127.0.0.1:18492" \
    SWITCHBOARD__CLUSTER__REPLICAS="$replicas" \
    SWITCHBOARD__LIMITS__PUBLISH_PER_S=1000000 \
    SWITCHBOARD__LIMITS__PUBLISH_BURST=1000000 \
    SWITCHBOARD__LIMITS__OUTBOUND_QUEUE=65536 \
    SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS=1000000 \
    SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS=1000000 \
    SWITCHBOARD__LIMITS__CONNECTS_PER_S=1000000 \
    SWITCHBOARD__LIMITS__CONNECT_BURST=1000000 \
    RUST_LOG=warn target/release/switchboard 2>"$WORK/replicas-$replicas-node-$i.log" & p=$!; PIDS+=("$p"); NODE_PIDS+=("$p"); ADDRS+=("127.0.0.1:1839$i")
  done
  for a in "${ADDRS[@]}"; do wait_http "$a"; done
  # Until every node sees all three.
  for _ in $(seq 100); do
    n=$(curl -sf "http://${ADDRS[0]}/metrics" | awk '/^switchboard_cluster_nodes /{print $2}')
    [ "$n" = "3" ] && break; sleep 0.1
  done
  target/release/switchboard-bench run $QUICK --only cross-node \
    --switchboard-cluster "$(join "${ADDRS[@]}")" --switchboard-cluster-pids "$(join "${NODE_PIDS[@]}")" \
    --out "$WORK/replicas-$replicas.json"
  for p in "${NODE_PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  python3 - "$WORK/replicas-$replicas.json" "$replicas" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc["scenarios"]:
    print(f"replicas {sys.argv[2]}: pace {r.get('pace')}, members {r.get('members')}, "
          f"deliveries/s {r.get('deliveries_per_s')}, p99 ms {r.get('p99_ms')}, lost {r.get('lost')}")
PY
done
