#!/usr/bin/env bash
# Installs what lunafs needs, builds it, and mounts a demo store.
#   contrib/demo.sh [STORE [MOUNTPOINT]]   (defaults: /var/lib/lunafs/demo, /mnt/lunafs-demo)
# Unmount with: lunafs umount MOUNTPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:-/var/lib/lunafs/demo}
MNT=${2:-/mnt/lunafs-demo}
contrib/install-deps.sh
contrib/install.sh          # /usr/local/bin/lunafs, mount.fuse.lunafs, lunafs@.service
BIN=/usr/local/bin/lunafs
mkdir -p "$MNT"
if mountpoint -q "$MNT"; then
  echo "$MNT is already mounted; unmount it with: $BIN umount $MNT" >&2
  exit 1
fi
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
