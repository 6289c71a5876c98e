#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, Rust tests (unit,
# property and real-process integration tests), then a Python client talking
# to the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== python client"
python3 -m venv target/pyenv >/dev/null 2>&1 || true
target/pyenv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
cargo build --quiet --bin switchboard
SWITCHBOARD_BIN="$PWD/target/debug/switchboard" target/pyenv/bin/python tests/python/test_client.py
