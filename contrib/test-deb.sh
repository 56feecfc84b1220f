#!/usr/bin/env bash
# Tests the Debian package on this machine for real (root): builds it, installs it with
# `dpkg -i`, mounts a new store through `mount -t fuse.lunafs` with the packaged helper and
# binary, writes and reads a file there, checks the man pages, the completions and the
# unit, unmounts, removes the package with `dpkg -r` and checks that none of its files or
# directories is left. Files of an earlier `contrib/install.sh` that the package replaced
# (the mount helper) are put back at the end. Run by contrib/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test-deb.sh: needs root (dpkg -i)" >&2; exit 1; }
if dpkg-query -W -f='${Status}' lunafs 2>/dev/null | grep -q "ok installed"; then
  echo "test-deb.sh: a lunafs package is installed already; not touching it" >&2
  exit 1
fi
work=$(mktemp -d /tmp/lunafs-deb.XXXXXX)
saved=()
fail() { echo "test-deb.sh: FAILED: $*" >&2; exit 1; }
restore() {
  set +e   # put back as much as can be, whatever fails on the way
  mountpoint -q "$work/mnt" 2>/dev/null && fusermount3 -u "$work/mnt"
  dpkg-query -W lunafs >/dev/null 2>&1 && dpkg -r lunafs >/dev/null 2>&1
  for f in "${saved[@]}"; do cp -a "$work/saved$f" "$f"; done
  rm -rf "$work"
}
trap restore EXIT

deb=$(contrib/package-deb.sh "$work")
files=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
saved=()
for f in $files; do
  if [ ! -d "$f" ] && { [ -e "$f" ] || [ -L "$f" ]; }; then
    mkdir -p "$work/saved$(dirname "$f")"
    cp -a "$f" "$work/saved$f"
    saved+=("$f")
  fi
done

dpkg -i "$deb" >/dev/null
dpkg-query -W -f='${Status}\n' lunafs | grep -q "install ok installed" || fail "not installed"
mkdir "$work/mnt"
# Only the package's programs: /usr/local/bin may hold a lunafs from contrib/install.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t fuse.lunafs "$work/store" "$work/mnt" -o noatime
mkdir "$work/mnt/b"
echo "from the package" > "$work/mnt/b/hello"
[ "$(cat "$work/mnt/b/hello")" = "from the package" ] || fail "read back"
/usr/bin/lunafs status "$work/mnt" | grep -q ": healthy" || fail "status"
daemon=$(pgrep -f -- " mount $work/store $work/mnt " | head -1 || true)
[ "$(readlink "/proc/$daemon/exe")" = /usr/bin/lunafs ] ||
  fail "the mount does not run the packaged binary"
for page in lunafs lunafs-mount lunafs-status lunafs-class-put; do
  man -w "$page" >/dev/null || fail "no man page $page"
done
grep -q "lunafs" /usr/share/bash-completion/completions/lunafs || fail "bash completion"
systemd-analyze verify /lib/systemd/system/lunafs@.service || fail "systemd-analyze verify"
# lunafs umount waits until the daemon has let go of the store (plain umount does not).
/usr/bin/lunafs umount "$work/mnt"

dpkg -r lunafs >/dev/null
left=()
for f in $files; do
  if [ -e "$f" ] || [ -L "$f" ]; then
    # Directories that other packages own too (/usr/bin, ...) stay, as they must.
    [ -d "$f" ] && [ ! -L "$f" ] && [ "$f" != /usr/share/doc/lunafs/ ] &&
      [ "$f" != /usr/share/doc/lunafs/examples/ ] && continue
    left+=("$f")
  fi
done
[ ${#left[@]} -eq 0 ] || fail "dpkg -r left: ${left[*]}"
status=$(dpkg-query -W -f='${Status}' lunafs 2>/dev/null || true)
case "$status" in "" | *not-installed*) ;; *) fail "after dpkg -r the package is: $status" ;; esac
echo "test-deb.sh: package $(basename "$deb") installs, mounts, and removes cleanly"
