#!/usr/bin/env bash
# Installs what lunafs needs, builds it, and mounts a demo store.
#   contrib/demo.sh [STORE [MOUNTPOINT]]   (defaults: /var/lib/lunafs/demo, /mnt/lunafs-demo)
#   contrib/demo.sh --shared               a shared filesystem on a throwaway local etcd + Ceph
#                                          (contrib/cluster.sh, in /var/lib/lunafs/cluster),
#                                          mounted twice: /mnt/lunafs-a and /mnt/lunafs-b
# Unmount with: lunafs umount MOUNTPOINT (and contrib/cluster.sh stop /var/lib/lunafs/cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
contrib/install-deps.sh
contrib/install.sh          # /usr/local/bin/lunafs, mount.fuse.lunafs, lunafs@.service
BIN=/usr/local/bin/lunafs

free_mountpoint() {
  mkdir -p "$1"
  if mountpoint -q "$1"; then
    echo "$1 is already mounted; unmount it with: $BIN umount $1" >&2
    exit 1
  fi
}

if [ "${1:-}" = "--shared" ]; then
  CLUSTER=/var/lib/lunafs/cluster
  [ -e "$CLUSTER/pids" ] || contrib/cluster.sh start "$CLUSTER"
  # shellcheck disable=SC1091
  . "$CLUSTER/env"
  FS="etcd://$LUNAFS_ETCD/demo"
  "$BIN" format "$FS" --data "$LUNAFS_RADOS" 2>/dev/null || echo "$FS exists; mounting it"
  for m in /mnt/lunafs-a /mnt/lunafs-b; do free_mountpoint "$m"; "$BIN" mount "$FS" "$m" -o allow_other; done
  [ -d /mnt/lunafs-a/demo ] || mkdir /mnt/lunafs-a/demo
  echo "written on mount a" > /mnt/lunafs-a/demo/hello.txt
  setfattr -n user.greeting -v hello /mnt/lunafs-a/demo/hello.txt
  echo "mount b reads: $(cat /mnt/lunafs-b/demo/hello.txt) ($(getfattr --absolute-names --only-values -n user.greeting /mnt/lunafs-b/demo/hello.txt))"
  echo "lunafs $FS is mounted at /mnt/lunafs-a and /mnt/lunafs-b (data: $LUNAFS_RADOS)"
  echo "stop: $BIN umount /mnt/lunafs-a; $BIN umount /mnt/lunafs-b; contrib/cluster.sh stop $CLUSTER"
  exit 0
fi

STORE=${1:-/var/lib/lunafs/demo}
MNT=${2:-/mnt/lunafs-demo}
free_mountpoint "$MNT"
"$BIN" mount "$STORE" "$MNT" -o allow_other
[ -d "$MNT/demo" ] || mkdir "$MNT/demo"
echo "hello from lunafs" > "$MNT/demo/hello.txt"
setfattr -n user.greeting -v hello "$MNT/demo/hello.txt"
# The shipped object classes, and a handler call by CLI and by setfattr.
for class in lua/classes/*.lua; do "$BIN" class put -m "$MNT" "$class"; done
"$BIN" call "$MNT/demo/hello.txt" md5.digest >/dev/null
setfattr -n user.cls.md5.digest "$MNT/demo/hello.txt"     # records user.md5
echo "lunafs is mounted at $MNT (store: $STORE, log: $STORE/lunafs.log)"
echo "try:  ls -l $MNT/demo; getfattr -d $MNT/demo/hello.txt; cat $MNT/.lunafs/version"
echo "      lunafs call $MNT/demo/hello.txt md5.digest; ls $MNT/.lunafs/classes"
echo "stop: $BIN umount $MNT"
