#!/usr/bin/env bash
# Runs every test of lunafs: unit, core (no kernel), real FUSE mounts and CLI.
# FUSE tests are required: they fail (not skip) when /dev/fuse or fusermount3 is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
contrib/install-deps.sh
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: FUSE tests cannot run" >&2; exit 1; }
contrib/install.sh --helpers   # mount.fuse.lunafs, for the `mount -t fuse.lunafs` test
cargo build --release --tests --locked
cargo test --release --locked -- --test-threads="${LUNAFS_TEST_THREADS:-4}"
