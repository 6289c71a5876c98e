#!/usr/bin/env bash
# The Autobahn WebSocket test cases (run by kosoku) against Switchboard's
# WebSocket stack: a node with `[debug] echo = true` serves GET /echo through
# the same upgrade, frame reader, limits and writer as /ws. Compression
# cases (12.*, 13.*) are excluded: permessage-deflate is not offered.
#   tests/conformance/run.sh PYTHON SWITCHBOARD_BINARY
set -euo pipefail
PY="$1"; BIN="$2"
cd "$(dirname "$0")/../.."
"$PY" -m pip install --quiet --disable-pip-version-check -r tests/conformance/requirements.txt
KOSOKU="$(dirname "$PY")/kosoku"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Autobahn's 9.* cases send messages of up to 16 MiB.
SWITCHBOARD__HTTP__LISTEN="127.0.0.1:$PORT" SWITCHBOARD__DEBUG__ECHO=true \
SWITCHBOARD__LIMITS__MAX_FRAME_BYTES=16777216 RUST_LOG=warn "$BIN" & SB=$!
trap 'kill $SB 2>/dev/null || true' EXIT
"$PY" - "$PORT" <<'PYEOF'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
        break
    except Exception:
        time.sleep(0.1)
PYEOF
OUT=target/conformance
rm -rf "$OUT"
status=0
"$KOSOKU" -m fuzzingclient -x '12.*' -x '13.*' -p 2 -o "$OUT" "ws://127.0.0.1:$PORT/echo" || status=$?
# One line per verdict, e.g. "OK 294, NON-STRICT 4, INFORMATIONAL 3".
"$PY" - "$OUT/index.json" <<'PYEOF'
import collections, json, sys
results = json.load(open(sys.argv[1]))
cases = {k: c for per_agent in results.values() for k, c in per_agent.items()}
verdicts = collections.Counter(c["behavior"] for c in cases.values())
closes = collections.Counter(c["behaviorClose"] for c in cases.values())
print(f"conformance: {len(cases)} cases; behavior "
      + ", ".join(f"{k} {v}" for k, v in verdicts.most_common())
      + "; close " + ", ".join(f"{k} {v}" for k, v in closes.most_common()))
good = ("OK", "NON-STRICT", "INFORMATIONAL")
bad = sorted(k for k, c in cases.items()
             if c["behavior"] not in good or c["behaviorClose"] not in good)
if bad:
    print("failed cases: " + " ".join(bad))
    sys.exit(1)
PYEOF
exit $status
