#!/usr/bin/env bash
# Installs the Debian packages lunafs needs to build, run, test and benchmark.
# The one list of system packages: demo.sh, test.sh and .ci/run all call this.
set -euo pipefail
PKGS=(
  fuse3 libfuse3-dev          # fusermount3, /etc/fuse.conf (mounts)
  libclang-dev clang          # bindgen for librocksdb-sys
  build-essential pkg-config  # C++ build of RocksDB
  attr rsync git tar diffutils python3 coreutils   # the tools the tests drive
  nats-server                 # notification tests
  protobuf-compiler libprotobuf-dev   # etcd-client's gRPC code generation
  etcd-server etcd-client     # shared backend: metadata (tests start a private etcd)
  ceph-mon ceph-mgr ceph-osd ceph-common librados-dev python3-rados   # shared backend: data (RADOS)
  ceph-mds ceph-fuse          # benchmarks (CephFS peer)
  bindfs fio                  # benchmarks (FUSE passthrough baseline, IOPS)
  redis-server redis-tools    # benchmarks (Redis EVALSHA, the peer of handler calls)
  systemd                     # systemd-analyze, to verify the unit file
  prometheus curl             # promtool checks the /metrics a test scrapes with curl
  man-db                      # man -w, to check the installed man pages
  util-linux mount            # mount(8), umount(8), mountpoint(1)
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }
