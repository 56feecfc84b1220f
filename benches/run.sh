#!/usr/bin/env bash
# Filesystem benchmark: the same workloads on lunafs, ext4 (a directory on the same disk),
# tmpfs and bindfs (a FUSE passthrough), in one run, printed as a markdown table with the
# lunafs/bindfs ratio (< 1.00 means lunafs is faster for times; > 1.00 better for IOPS).
#
#   benches/run.sh [--quick]      (--quick: 2,000 files and a 256 MiB sequential file)
#   LUNAFS_OPTS=no_writeback_cache benches/run.sh     (mount options for lunafs, to compare)
#   ROUNDS=5 benches/run.sh       (rounds per target, default 3; the table shows the median)
#   SHARED=1 benches/run.sh       (adds lunafs-shared, on a local etcd + Ceph from
#                                  contrib/cluster.sh, and cephfs: CephFS through ceph-fuse
#                                  on the same cluster, the distributed filesystem to beat)
#   ONLY="lunafs-shared cephfs" SHARED=1 benches/run.sh     (only those targets)
#
# Needs root (tmpfs mount, drop_caches), fuse3, bindfs, fio, python3 (contrib/install-deps.sh).
# Everything lives under $BENCH_DIR (default /var/tmp/lunafs-bench) and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=10000; SEQ_MB=1024; XATTRS=10000; ROUNDS=${ROUNDS:-3}
if [ "${1:-}" = "--quick" ]; then FILES=2000; SEQ_MB=256; XATTRS=2000; fi
BASE=${BENCH_DIR:-/var/tmp/lunafs-bench}
BIN=$(contrib/release-bin.sh)
# The shared targets' cluster lives in RAM like its memstore OSD, so etcd's journal and the
# CephFS MDS journal (on that OSD) are on the same footing.
CLUSTER=$( [ -d /dev/shm ] && echo /dev/shm/lunafs-bench-cluster || echo "$BASE/cluster")
[ "$(id -u)" -eq 0 ] || { echo "run as root (tmpfs mount and drop_caches)" >&2; exit 1; }

cleanup() {
  # lunafs umount waits until the daemon has released the store, so rm cannot race it.
  if mountpoint -q "$BASE/lunafs"; then "$BIN" umount "$BASE/lunafs" || true; fi
  if mountpoint -q "$BASE/bindfs"; then fusermount3 -u "$BASE/bindfs" || true; fi
  mountpoint -q "$BASE/tmpfs" && umount "$BASE/tmpfs" || true
  if mountpoint -q "$BASE/shared"; then "$BIN" umount "$BASE/shared" || true; fi
  if mountpoint -q "$BASE/cephfs"; then fusermount3 -u "$BASE/cephfs" || true; fi
  [ -e "$CLUSTER/pids" ] && contrib/cluster.sh stop "$CLUSTER" || true
  rm -rf "$BASE" "$CLUSTER"
}
trap cleanup EXIT
cleanup
mkdir -p "$BASE"/{ext4,tmpfs,bindfs-src,bindfs,lunafs,tar}
mount -t tmpfs -o size=$((SEQ_MB + 1024))m tmpfs "$BASE/tmpfs"
bindfs "$BASE/bindfs-src" "$BASE/bindfs"
"$BIN" mount "$BASE/store" "$BASE/lunafs" ${LUNAFS_OPTS:+-o "$LUNAFS_OPTS"}
mkdir "$BASE/lunafs/bench"

# A real source tree to untar: RocksDB's sources from the cargo registry.
SRC=$(ls -d "$HOME"/.cargo/registry/src/*/librocksdb-sys-*/rocksdb 2>/dev/null | head -1)
tar -C "$(dirname "$SRC")" -cf "$BASE/tar/src.tar" "$(basename "$SRC")"
TAR_FILES=$(tar -tf "$BASE/tar/src.tar" | wc -l)

declare -A DIRS=([ext4]="$BASE/ext4" [tmpfs]="$BASE/tmpfs" [bindfs]="$BASE/bindfs" [lunafs]="$BASE/lunafs/bench")
ORDER=(lunafs bindfs ext4 tmpfs)
if [ "${SHARED:-0}" = 1 ]; then
  # RAM-backed OSD big enough for the sequential file on both shared targets, plus slack.
  LUNAFS_CLUSTER_OSD_BYTES=$(( (SEQ_MB * 3 + 4096) << 20 )) contrib/cluster.sh start "$CLUSTER" --cephfs
  # shellcheck disable=SC1091
  . "$CLUSTER/env"
  mkdir -p "$BASE/shared" "$BASE/cephfs"
  "$BIN" format "etcd://$LUNAFS_ETCD/bench" --data "$LUNAFS_RADOS" >/dev/null
  "$BIN" mount "etcd://$LUNAFS_ETCD/bench" "$BASE/shared"
  mkdir "$BASE/shared/bench"
  ceph-fuse -c "$CEPH_CONF" "$BASE/cephfs" >/dev/null 2>&1
  DIRS+=([lunafs-shared]="$BASE/shared/bench" [cephfs]="$BASE/cephfs")
  ORDER+=(lunafs-shared cephfs)
fi
[ -z "${ONLY:-}" ] || read -r -a ORDER <<< "$ONLY"
has() { [[ " ${ORDER[*]} " == *" $1 "* ]]; }
declare -A R

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
timed() { # name target cmd...   (appends this round's seconds to R[name,target])
  local name=$1 t=$2; shift 2
  drop
  local s; s=$(now); "$@" >/dev/null; local e; e=$(now)
  R[$name,$t]+=" $(python3 -c "print(f'{$e-$s:.3f}')")"
}
median() { python3 -c "import statistics,sys; m = statistics.median(float(x) for x in sys.argv[1:]); print(f'{m:.0f}' if m >= 100 else f'{m:.3f}')" $1; }

py() { python3 - "$@"; }
mkfiles() { py "$1" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2]); data = os.urandom(4096)
for i in range(10): os.makedirs(f"{d}/small/d{i}", exist_ok=True)
for i in range(n):
    fd = os.open(f"{d}/small/d{i%10}/f{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, data); os.close(fd)
PY
}
statfiles() { py "$1" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n): os.stat(f"{d}/small/d{i%10}/f{i}")
PY
}
readfiles() { py "$1" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(f"{d}/small/d{i%10}/f{i}", "rb") as f: assert len(f.read()) == 4096
PY
}
rmfiles() { py "$1" "$FILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n): os.unlink(f"{d}/small/d{i%10}/f{i}")
PY
}
xattrs() { py "$1" "$XATTRS" <<'PY'
# 10 attributes per file: ext4 keeps a file's xattrs in one 4 KiB block.
import os, sys
d, n = sys.argv[1], int(sys.argv[2]); os.makedirs(f"{d}/x", exist_ok=True)
for f in range(n // 10): open(f"{d}/x/{f}", "w").close()
for i in range(n): os.setxattr(f"{d}/x/{i // 10}", f"user.k{i % 10}", b"v" * 32)
for i in range(n): assert os.getxattr(f"{d}/x/{i // 10}", f"user.k{i % 10}") == b"v" * 32
PY
}
fio_iops() { # dir rw
  fio --name=b --directory="$1" --filename=fio.dat --size=256M --bs=4k --rw="$2" \
      --ioengine=psync --runtime=10 --time_based --end_fsync=1 --output-format=terse 2>/dev/null |
    awk -F';' -v rw="$2" '{ print (rw == "randread") ? $8 : $49 }'
}

# CPU time the hypervisor gave to others (steal) makes runs on a shared VM noisy: report it.
cpu_ticks() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
read -r steal0 total0 < <(cpu_ticks)
for round in $(seq "$ROUNDS"); do
for t in "${ORDER[@]}"; do
  d=${DIRS[$t]}
  timed create "$t" mkfiles "$d"
  timed stat "$t" statfiles "$d"
  timed lsR "$t" ls -lR "$d/small"
  timed read "$t" readfiles "$d"
  timed unlink "$t" rmfiles "$d"
  timed seqwrite "$t" dd if=/dev/zero of="$d/seq" bs=1M count="$SEQ_MB" conv=fsync status=none
  timed seqread "$t" dd if="$d/seq" of=/dev/null bs=1M status=none
  rm -f "$d/seq"
  timed untar "$t" tar -C "$d" -xf "$BASE/tar/src.tar"
  timed rmrf "$t" rm -rf "$d/$(basename "$SRC")"
  timed xattr "$t" xattrs "$d"
  rm -rf "$d/x" "$d/small"
  drop; R[randwrite,$t]+=" $(fio_iops "$d" randwrite)"
  drop; R[randread,$t]+=" $(fio_iops "$d" randread)"
  rm -f "$d/fio.dat"
done
done

echo
read -r steal1 total1 < <(cpu_ticks)
steal=$(python3 -c "print(f'{100 * ($steal1 - $steal0) / max(1, $total1 - $total0):.1f}')")
echo "Median of $ROUNDS rounds. lunafs options: ${LUNAFS_OPTS:-defaults}. CPU steal during the run: $steal%."
echo
RATIOS=()
has lunafs && has bindfs && RATIOS+=(lunafs/bindfs)
has lunafs-shared && has cephfs && RATIOS+=(lunafs-shared/cephfs)
header="| workload |"
for t in "${ORDER[@]}" "${RATIOS[@]}"; do header+=" $t |"; done
echo "$header"
printf '|---%.0s' x "${ORDER[@]}" "${RATIOS[@]}"; echo "|"
row() { # key label
  local k=$1 label=$2 t r line
  declare -A M
  for t in "${ORDER[@]}"; do M[$t]=$(median "${R[$k,$t]}"); done
  line="| $label |"
  for t in "${ORDER[@]}"; do line+=" ${M[$t]} |"; done
  for r in "${RATIOS[@]}"; do
    line+=" $(python3 -c "a,b=${M[${r%/*}]},${M[${r#*/}]}; print(f'{a/b:.2f}' if b else '-')") |"
  done
  echo "$line"
}
row create "create+write $FILES x 4 KiB in 10 dirs (s)"
row stat "stat $FILES files (s)"
row lsR "ls -lR (s)"
row read "read $FILES files back (s)"
row unlink "unlink $FILES files (s)"
row seqwrite "sequential write $SEQ_MB MiB, dd bs=1M conv=fsync (s)"
row seqread "sequential read $SEQ_MB MiB, cold cache (s)"
row untar "untar RocksDB source ($TAR_FILES entries) (s)"
row rmrf "rm -rf of that tree (s)"
row xattr "$XATTRS xattr set + get (s)"
row randwrite "random 4 KiB write, fio psync (IOPS)"
row randread "random 4 KiB read, fio psync, cold (IOPS)"
