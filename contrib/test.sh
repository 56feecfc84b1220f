#!/usr/bin/env bash
# Runs every test of lunafs: unit, core (no kernel), real FUSE mounts and CLI, and the shared
# backend's on a throwaway local etcd + Ceph (contrib/cluster.sh, stopped at exit); then the
# mount, Lua and notification suites once more on the shared backend; then the Debian
# package (contrib/test-deb.sh: installed, mounted, removed).
# FUSE and cluster tests are required: they fail (not skip) when /dev/fuse, fusermount3,
# etcd or Ceph is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
contrib/install-deps.sh
[ -e /dev/fuse ] || { echo "/dev/fuse is missing: FUSE tests cannot run" >&2; exit 1; }
contrib/install.sh --helpers   # mount.fuse.lunafs, for the `mount -t fuse.lunafs` test
cargo build --release --tests --locked
if [ -z "${LUNAFS_TEST_CLUSTER:-}" ]; then
  # In RAM where there is a /dev/shm: etcd fsyncs every commit.
  LUNAFS_TEST_CLUSTER=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp)/lunafs-cluster.XXXXXX")
  trap 'contrib/cluster.sh stop "$LUNAFS_TEST_CLUSTER"; rm -rf "$LUNAFS_TEST_CLUSTER"' EXIT
  contrib/cluster.sh start "$LUNAFS_TEST_CLUSTER"
  export LUNAFS_TEST_CLUSTER
fi
threads=--test-threads="${LUNAFS_TEST_THREADS:-4}"
cargo test --release --locked -- "$threads"
# The mount, Lua and notification suites again, each mount on a new shared filesystem on the
# cluster (etcd + Ceph) instead of an embedded store.
shared=(mount_concurrency mount_crash mount_data mount_namespace mount_tools mount_xattr
        lua_api lua_ceph lua_classes lua_limits lua_semantics notify)
LUNAFS_TEST_BACKEND=shared cargo test --release --locked "${shared[@]/#/--test=}" -- "$threads"

# The Debian package, for real: dpkg -i, a mount through `mount -t fuse.lunafs`, dpkg -r.
contrib/test-deb.sh
