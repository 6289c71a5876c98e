#!/usr/bin/env bash
# An independent density probe (issue 11's method, not switchboard-bench):
# N connections from Python `websockets` in four processes, each joined to
# one of 100 rooms with presence: false; server RSS from /proc 2 s and 10 s
# after the last join, then while every connection pings every PING_S s.
# TRANSPORTS `sse` (or `ws,sse`: one after the other, a fresh server each)
# opens N Server-Sent Events streams (`GET /sse?rooms=..&presence=false`)
# the same way instead.
#   benches/probe/run.sh [path/to/switchboard] [N] [PING_S] [TRANSPORTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/switchboard}; N=${2:-8000}; PING=${3:-5}; TRANSPORTS=${4:-ws}
[ -x "$BIN" ] || cargo build --release --quiet -p switchboard-gateway --bin switchboard
VENV=target/probe-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet websockets==13.1 msgpack==1.1.0
fi
LOG=$(mktemp)
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -f "$LOG"' EXIT
for T in ${TRANSPORTS//,/ }; do
  : >"$LOG"
  SWITCHBOARD__HTTP__LISTEN=127.0.0.1:0 \
  SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS=1000000 \
  SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS=1000000 \
  SWITCHBOARD__LIMITS__CONNECTS_PER_S=1000000 \
  SWITCHBOARD__LIMITS__CONNECT_BURST=1000000 \
  RUST_LOG=info "$BIN" 2>"$LOG" & PID=$!
  for _ in $(seq 100); do grep -q "listening" "$LOG" && break; sleep 0.1; done
  ADDR=$(grep -v cluster "$LOG" | grep -o 'addr=[0-9.:]*' | head -1 | cut -d= -f2)
  sleep 1
  "$VENV/bin/python" benches/probe/probe.py "$ADDR" "$PID" "$N" "$PING" "$T"
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
  sleep 2
done
