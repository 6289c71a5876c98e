#!/usr/bin/env bash
# Runs every benchmark scenario against Switchboard, the Redis pub/sub peer
# and the kernel floor, in one session, then regenerates docs/benchmarks.md.
#   benches/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"

SHARED="${SHARED:-$(cd .. && pwd)/shared}"
source benches/lib.sh

echo "== build"
cargo build --release --quiet -p switchboard-gateway -p switchboard-bench
cc -O2 -pthread "$SHARED/tools/fanout-floor.c" -o "$WORK/fanout-floor"
cc -O2 "$SHARED/tools/socket-memory-floor.c" -o "$WORK/socket-memory-floor"

echo "== Redis peer: redis-server and node dependencies"
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
rm -rf "$WORK/redis-baseline" && cp -r "$SHARED/peers/redis-baseline" "$WORK/redis-baseline"
(cd "$WORK/redis-baseline" && npm ci --silent --no-audit --no-fund)


echo "== start switchboard"
SWITCHBOARD__HTTP__LISTEN=127.0.0.1:18080 \
SWITCHBOARD__LIMITS__PUBLISH_PER_S=1000000 \
SWITCHBOARD__LIMITS__PUBLISH_BURST=1000000 \
SWITCHBOARD__LIMITS__OUTBOUND_QUEUE=65536 \
SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS=1000000 \
SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS=1000000 \
SWITCHBOARD__LIMITS__CONNECTS_PER_S=1000000 \
SWITCHBOARD__LIMITS__CONNECT_BURST=1000000 \
RUST_LOG=warn target/release/switchboard & SB=$!; PIDS+=("$SB")
wait_http 127.0.0.1:18080

echo "== start the Redis peer"
redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null & RD=$!; PIDS+=("$RD")
sleep 0.5
(cd "$WORK/redis-baseline" && PORT=18081 REDIS_URL=redis://127.0.0.1:16379 NODE_NAME=a exec node server.js) >/dev/null 2>&1 & NB=$!; PIDS+=("$NB")
wait_http 127.0.0.1:18081

target/release/switchboard-bench run $QUICK \
  --switchboard 127.0.0.1:18080 --switchboard-pid "$SB" \
  --baseline 127.0.0.1:18081 --baseline-pids "$NB,$RD" \
  --floor-dir "$WORK" \
  --out benches/results/latest.json
kill "$SB" "$NB" 2>/dev/null || true

echo "== start three Switchboard nodes and three peer nodes"
SB_ADDRS=(); SB_PIDS=(); NB_ADDRS=(); NB_PIDS=()
for i in 0 1 2; do
  SWITCHBOARD__NODE__NAME="bench-$i" \
  SWITCHBOARD__HTTP__LISTEN="127.0.0.1:1809$i" \
  SWITCHBOARD__CLUSTER__LISTEN="127.0.0.1:1819$i" \
  SWITCHBOARD__CLUSTER__SEEDS="127.0.0.1:18190,127.0.0.1:18191,127.0.0.1:18192" \
  SWITCHBOARD__LIMITS__PUBLISH_PER_S=1000000 \
  SWITCHBOARD__LIMITS__PUBLISH_BURST=1000000 \
  SWITCHBOARD__LIMITS__OUTBOUND_QUEUE=65536 \
  SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS=1000000 \
  SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS=1000000 \
  SWITCHBOARD__LIMITS__CONNECTS_PER_S=1000000 \
  SWITCHBOARD__LIMITS__CONNECT_BURST=1000000 \
  RUST_LOG=warn target/release/switchboard & p=$!; PIDS+=("$p"); SB_PIDS+=("$p"); SB_ADDRS+=("127.0.0.1:1809$i")
  (cd "$WORK/redis-baseline" && PORT="1828$i" REDIS_URL=redis://127.0.0.1:16379 NODE_NAME="n$i" exec node server.js) >/dev/null 2>&1 & p=$!; PIDS+=("$p"); NB_PIDS+=("$p"); NB_ADDRS+=("127.0.0.1:1828$i")
done
for a in "${SB_ADDRS[@]}" "${NB_ADDRS[@]}"; do wait_http "$a"; done
target/release/switchboard-bench run $QUICK --only cross-node --append \
  --switchboard-cluster "$(join "${SB_ADDRS[@]}")" --switchboard-cluster-pids "$(join "${SB_PIDS[@]}")" \
  --baseline-cluster "$(join "${NB_ADDRS[@]}")" --baseline-cluster-pids "$(join "${NB_PIDS[@]}" "$RD")" \
  --out benches/results/latest.json
target/release/switchboard-bench report --input benches/results/latest.json --out docs/benchmarks.md
echo "== wrote benches/results/latest.json and docs/benchmarks.md"
