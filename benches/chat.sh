#!/usr/bin/env bash
# Memory under activity (issue 11): the `chat` scenarios against one
# Switchboard node and the Redis pub/sub peer, in one session. benches/run.sh
# runs them too (with everything else); this runs only them.
#   benches/chat.sh [--quick] [path/to/switchboard]   (default: this build)
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=""
[ "${1:-}" = "--quick" ] && { QUICK="--quick"; shift; }
BIN="${1:-target/release/switchboard}"
SHARED="${SHARED:-$(cd .. && pwd)/shared}"
source benches/lib.sh
cargo build --release --quiet -p switchboard-gateway -p switchboard-bench
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if [ ! -d "$WORK/redis-baseline/node_modules" ]; then
  rm -rf "$WORK/redis-baseline" && cp -r "$SHARED/peers/redis-baseline" "$WORK/redis-baseline"
  (cd "$WORK/redis-baseline" && npm ci --silent --no-audit --no-fund)
fi

SWITCHBOARD__HTTP__LISTEN=127.0.0.1:18080 \
SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS=1000000 \
SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS=1000000 \
SWITCHBOARD__LIMITS__CONNECTS_PER_S=1000000 \
SWITCHBOARD__LIMITS__CONNECT_BURST=1000000 \
RUST_LOG=warn "$BIN" & SB=$!; PIDS+=("$SB")
wait_http 127.0.0.1:18080
redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no --daemonize no >/dev/null & RD=$!; PIDS+=("$RD")
sleep 0.5
(cd "$WORK/redis-baseline" && PORT=18081 REDIS_URL=redis://127.0.0.1:16379 NODE_NAME=a exec node server.js) >/dev/null 2>&1 & NB=$!; PIDS+=("$NB")
wait_http 127.0.0.1:18081

target/release/switchboard-bench run $QUICK --only chat \
  --switchboard 127.0.0.1:18080 --switchboard-pid "$SB" \
  --baseline 127.0.0.1:18081 --baseline-pids "$NB,$RD" \
  --out "$WORK/chat.json"
python3 - "$WORK/chat.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["scenarios"]:
    f = lambda k: "-" if r.get(k) is None else f"{r[k]:.2f}"
    print(f'{r["system"]:15} {r["command"]:4} every {r["every_ms"]:>5} ms  {r["connections"]} conns '
          f'(failed {r["failed"]})  KiB/conn: 2 s {f("rss_kib_per_connection_2s")}  '
          f'10 s {f("rss_kib_per_connection_10s")}  steady {f("rss_kib_per_connection_steady")}')
PY
