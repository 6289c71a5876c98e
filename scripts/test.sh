#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, Rust tests (unit,
# property and real-process integration tests), then a Python client and the
# JavaScript SDK talking to the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== the previous release (for the mixed-version test)"
SWITCHBOARD_PREVIOUS_BIN="$(scripts/previous-release.sh)"
export SWITCHBOARD_PREVIOUS_BIN

echo "== cargo test"
cargo test --workspace

echo "== kubernetes manifests and alert rules"
if ! command -v kubectl >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends kubectl prometheus >/dev/null
  else
    echo "kubectl and promtool are needed (apt-get install kubectl prometheus)"; exit 1
  fi
fi
python3 -m venv target/pyenv >/dev/null 2>&1 || true
target/pyenv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements-k8s.txt
kubectl kustomize k8s > target/k8s-rendered.yaml
# Every rendered resource against Kubernetes 1.30's schemas (the
# ServiceMonitor CRD has none here: gateway/tests/k8s.rs checks it).
target/pyenv/bin/kubernetes-validate -k 1.30.0 --strict target/k8s-rendered.yaml
promtool check rules k8s/prometheus-rules.yaml
promtool test rules k8s/prometheus-rules.test.yaml

echo "== python clients (WebSocket; SSE and long polling)"
target/pyenv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
cargo build --quiet --bin switchboard
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" target/pyenv/bin/python tests/python/test_client.py
# Server-Sent Events and long polling read with httpx, against a WebSocket member.
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" target/pyenv/bin/python tests/python/test_sse.py

echo "== /metrics of a live node through promtool check metrics"
SWITCHBOARD__HTTP__LISTEN=127.0.0.1:0 RUST_LOG=info target/debug/switchboard 2>target/metrics-node.log &
node_pid=$!
addr=""
for _ in $(seq 100); do
  addr=$(grep -v cluster target/metrics-node.log | grep -o 'listening.*addr=[0-9.:]*' | grep -o '[0-9.]*:[0-9]*$' | head -1 || true)
  [ -n "$addr" ] && break; sleep 0.1
done
curl -sf "http://$addr/metrics" > target/metrics.txt
kill "$node_pid"; wait "$node_pid" || true
promtool check metrics < target/metrics.txt

echo "== JavaScript SDK, the demo page's bundle, and the demo in Chromium"
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "Chromium is needed for the browser tests (apt-get install chromium)"; exit 1
  fi
fi
(cd clients/js && npm ci --no-audit --no-fund && npm run bundle)
# The bundle the gateway serves at /demo is committed: it must be the SDK's.
if ! git diff --quiet -- gateway/assets/demo/switchboard.js; then
  echo "gateway/assets/demo/switchboard.js is not the SDK's bundle: run 'npm run bundle' in clients/js and commit it"
  exit 1
fi
(cd clients/js && SWITCHBOARD_BIN=$PWD/../../target/debug/switchboard CHROMIUM_BIN="$(command -v chromium)" npm test)

echo "== WebSocket conformance (Autobahn cases via kosoku)"
tests/conformance/run.sh target/pyenv/bin/python target/debug/switchboard
