#!/usr/bin/env bash
# Scale benchmark for the SPEC section 6 promises that the side-by-side run (run.sh) does not
# cover: listing a 100,000-entry directory in under a second, and a per-operation cost that
# stays flat as the store grows from 10^4 to 10^6 objects; and how long `lunafs fsck` of the
# grown store takes.
#
#   benches/scale.sh [--quick]    (--quick: 10^3..10^5 objects, a 10,000-entry directory)
#
# Needs root (drop_caches), fuse3, python3. Everything lives under $BENCH_DIR (default
# /var/tmp/lunafs-scale) and is removed at the end.
#
# At each size the store holds N empty objects in 1,000 directories; then, with the kernel's
# caches dropped before each step, 10,000 operations of each kind are timed (µs per op):
# create+write of new 4 KiB objects among them, stat of random existing objects, read of the
# new objects, unlink of the new objects.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=(10000 100000 1000000); BIG=100000; OPS=10000
if [ "${1:-}" = "--quick" ]; then SIZES=(1000 10000 100000); BIG=10000; OPS=2000; fi
BASE=${BENCH_DIR:-/var/tmp/lunafs-scale}
source benches/mount.sh
D="$MNT/bench"
mkdir "$D"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
remount() { "$BIN" umount "$MNT"; "$BIN" mount "$BASE/store" "$MNT"; }
py() { python3 - "$@"; }

populate() { # from to: empty objects d{i%1000}/f{i}, in two processes (two cores)
  py "$D" "$1" "$2" <<'PY'
import os, sys
d, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(1000): os.makedirs(f"{d}/d{i}", exist_ok=True)
mid = (lo + hi) // 2
pid = os.fork()
a, b = (lo, mid) if pid == 0 else (mid, hi)
for i in range(a, b): os.close(os.open(f"{d}/d{i % 1000}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
if pid == 0: os._exit(0)
os.waitpid(pid, 0)
PY
}

step() { # name n ops: prints µs per op of one kind of operation
  drop
  py "$D" "$1" "$2" "$3" <<'PY'
import os, random, sys, time
d, what, n, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
new = [f"{d}/d{j % 1000}/new{j}" for j in range(ops)]
data = os.urandom(4096)
count = ops
t = time.perf_counter()
if what == "create":
    for p in new:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644); os.write(fd, data); os.close(fd)
elif what == "stat":
    count = min(ops, n)
    for i in random.Random(n).sample(range(n), count): os.stat(f"{d}/d{i % 1000}/f{i}")
elif what == "read":
    for p in new:
        with open(p, "rb") as f: assert len(f.read()) == 4096
elif what == "unlink":
    for p in new: os.unlink(p)
print(f"{(time.perf_counter() - t) / count * 1e6:.0f}")
PY
}

declare -A R
have=0
for n in "${SIZES[@]}"; do
  populate "$have" "$n"; have=$n
  for what in create stat read unlink; do R[$what,$n]=$(step "$what" "$n" "$OPS"); done
done

# The big directory: BIG empty objects in one directory, listed after a remount and a cache
# drop (nothing of it cached in the kernel or in RocksDB's block cache).
py "$D/big" "$BIG" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2]); os.makedirs(d)
for i in range(n): os.close(os.open(f"{d}/entry-{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
PY
listing() { # ls args...: seconds, cold
  remount; drop
  local s e; s=$(date +%s.%N); ls "$@" "$D/big" > /dev/null; e=$(date +%s.%N)
  python3 -c "print(f'{$e - $s:.3f}')"
}
names=$(listing -f); long=$(listing -l); count=$(ls -f "$D/big" | grep -c '^entry-')
[ "$count" -eq "$BIG" ] || { echo "listing showed $count of $BIG entries" >&2; exit 1; }

echo
echo "Per-operation cost as the store grows (µs per op, $OPS ops each, kernel caches dropped first):"
echo
header="| objects in the store |"; sep="|---|"
for n in "${SIZES[@]}"; do header+=" $n |"; sep+="---|"; done
echo "$header"; echo "$sep"
for what in create stat read unlink; do
  row="| $what |"
  for n in "${SIZES[@]}"; do row+=" ${R[$what,$n]} |"; done
  echo "$row"
done
echo
echo "Listing a $BIG-entry directory, cold (after remount and drop_caches):"
echo
echo "| command | seconds |"
echo "|---|---|"
echo "| ls -f (names only: readdir) | $names |"
echo "| ls -l (names and attributes: readdirplus) | $long |"

# fsck of the whole grown store (every size's objects and the big directory), unmounted and
# cold. It must be clean (set -e stops here otherwise).
"$BIN" umount "$MNT"; drop
objects=$(( ${SIZES[-1]} + BIG + 1000 + 2 ))
s=$(date +%s.%N); "$BIN" fsck "$BASE/store" > "$BASE/fsck.out"; e=$(date +%s.%N)
echo "| lunafs fsck of the store ($objects inodes: files and directories) | $(python3 -c "print(f'{$e - $s:.1f}')") |"
echo; cat "$BASE/fsck.out"
