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
  # Built in this checkout's target directory, so that the dependencies both
  # releases share are built once. Cargo names a path crate's artefacts by
  # its name, version and path inside its workspace, which both releases
  # share: the old one gets its own version, or one release's crates would
  # be linked against the other's.
  sed -i 's/^version = "0\.1\.0"$/version = "0.1.0-previous"/' "$out/src/Cargo.toml"
  grep -q '^version = "0.1.0-previous"$' "$out/src/Cargo.toml"
  # Its binary lands on target/debug/switchboard: copied out, then the
  # current one put back.
  CARGO_TARGET_DIR="$PWD/target" cargo build --quiet \
    --manifest-path "$out/src/Cargo.toml" --bin switchboard >&2
  cp target/debug/switchboard "$out/bin/switchboard.tmp"
  mv "$out/bin/switchboard.tmp" "$out/bin/switchboard"
  cargo build --quiet --bin switchboard >&2
fi
echo "$out/bin/switchboard"
