# What every benchmark script needs; sourced from the repository root.
# Results and logs go to $WORK; every process started is put in PIDS and
# stopped when the script exits, however it exits.
WORK=target/bench
mkdir -p "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# Waits (up to 10 s) until the node at host:port answers /readyz.
wait_http() { for _ in $(seq 100); do curl -sf "http://$1/readyz" >/dev/null && return 0; sleep 0.1; done; echo "no answer from $1"; exit 1; }
# Its arguments joined by commas.
join() { local IFS=,; echo "$*"; }
