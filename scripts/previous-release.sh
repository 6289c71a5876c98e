#!/usr/bin/env bash
# Builds the previous release's `switchboard` from this repository's history
# (once; kept under target/previous/) and prints its path. The mixed-version
# test (gateway/tests/upgrade.rs) runs it next to the current build, as a
# rolling deploy does. scripts/test.sh runs this before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The first release: wire version 1.
rev=ec3b930
out="$PWD/target/previous/$rev"
if [ ! -x "$out/bin/switchboard" ]; then
  rm -rf "$out/src"
  mkdir -p "$out/src" "$out/bin"
  git archive "$rev" | tar -x -C "$out/src"
  # In this checkout's target directory, so that the dependencies both
  # releases share are built once. Its binary lands on target/debug/
  # switchboard: copied out, then the current one put back.
  CARGO_TARGET_DIR="$PWD/target" cargo build --quiet --locked \
    --manifest-path "$out/src/Cargo.toml" --bin switchboard >&2
  cp target/debug/switchboard "$out/bin/switchboard.tmp"
  mv "$out/bin/switchboard.tmp" "$out/bin/switchboard"
  cargo build --quiet --bin switchboard >&2
fi
echo "$out/bin/switchboard"
