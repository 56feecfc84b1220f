#!/usr/bin/env bash
# Builds the release binary and prints its path, wherever cargo's target directory is
# (CARGO_TARGET_DIR, build.target-dir in a cargo config, or ./target). Build output: stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
dir=$(cargo metadata --no-deps --locked --format-version 1 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
echo "$dir/release/lunafs"
