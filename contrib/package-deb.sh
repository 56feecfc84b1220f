#!/usr/bin/env bash
# Builds lunafs_VERSION_ARCH.deb with dpkg-deb: the binary (/usr/bin/lunafs), the mount
# helper (/usr/sbin/mount.lunafs, mount.fuse.lunafs), lunafs@.service, the example config
# (/usr/share/doc/lunafs/examples/lunafs.toml: an example, not a conffile, so `dpkg -r`
# leaves nothing behind), the man pages and the bash/zsh/fish completions.
# Depends: fuse3, and the packages of the shared libraries the binary links (found with
# ldd and dpkg -S, so the list follows the build).
#   contrib/package-deb.sh [OUTDIR]    (default: the current directory); prints the .deb path
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath "${1:-.}")
bin=$("$root/contrib/release-bin.sh")
version=$("$bin" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/lunafs"

install -D -m 755 "$bin" "$pkg/usr/bin/lunafs"
strip --strip-debug "$pkg/usr/bin/lunafs"
install -d "$pkg/usr/sbin"
sed 's|LUNAFS_BIN:-/usr/local/bin/lunafs|LUNAFS_BIN:-/usr/bin/lunafs|' \
    "$root/contrib/mount.lunafs" > "$pkg/usr/sbin/mount.lunafs"
grep -q 'LUNAFS_BIN:-/usr/bin/lunafs}' "$pkg/usr/sbin/mount.lunafs" ||
  { echo "package-deb.sh: the mount helper's default binary did not change" >&2; exit 1; }
chmod 755 "$pkg/usr/sbin/mount.lunafs"
ln -s mount.lunafs "$pkg/usr/sbin/mount.fuse.lunafs"
install -d "$pkg/lib/systemd/system"
sed -e 's|/usr/local/bin/lunafs|/usr/bin/lunafs|g' \
    -e 's|file:///usr/local/share/doc/lunafs/README.md|man:lunafs(1)|' \
    "$root/systemd/lunafs@.service" > "$pkg/lib/systemd/system/lunafs@.service"
chmod 644 "$pkg/lib/systemd/system/lunafs@.service"
doc="$pkg/usr/share/doc/lunafs"
install -D -m 644 "$root/contrib/lunafs.toml" "$doc/examples/lunafs.toml"
install -m 644 "$root/contrib/fstab.example" "$doc/examples/fstab.example"
gzip -9n < "$root/README.md" > "$doc/README.md.gz"
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lunafs
Files: *
License: see the lunafs source repository
EOF
install -d "$pkg/usr/share/man/man1"
"$bin" manpages "$pkg/usr/share/man/man1"
gzip -9n "$pkg"/usr/share/man/man1/*.1
install -d "$pkg/usr/share/bash-completion/completions" \
  "$pkg/usr/share/zsh/vendor-completions" "$pkg/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$pkg/usr/share/bash-completion/completions/lunafs"
"$bin" completions zsh > "$pkg/usr/share/zsh/vendor-completions/_lunafs"
"$bin" completions fish > "$pkg/usr/share/fish/vendor_completions.d/lunafs.fish"

# The packages holding the libraries the binary links (libc, libstdc++, librados, ...).
libs=$(ldd "$bin" | awk '$3 ~ /^\// {print $3}')
owners=""
for l in $libs; do
  owner=$(dpkg -S "$(realpath "$l")" 2>/dev/null || dpkg -S "$l" 2>/dev/null) ||
    { echo "package-deb.sh: no Debian package owns $l, which lunafs links" >&2; exit 1; }
  owners+="${owner%%:*}"$'\n'
done
deps=$(printf '%s' "$owners" | sort -u | paste -sd, - | sed 's/,/, /g')
size=$(du -sk "$pkg" | cut -f1)
install -d "$pkg/DEBIAN"
cat > "$pkg/DEBIAN/control" <<EOF
Package: lunafs
Version: $version
Architecture: $arch
Maintainer: lunafs developers <lunafs@localhost>
Installed-Size: $size
Depends: fuse3${deps:+, $deps}
Section: admin
Priority: optional
Homepage: file:///usr/share/doc/lunafs/README.md.gz
Description: FUSE filesystem of buckets and objects with Lua object classes
 lunafs mounts an embedded RocksDB store (or a shared one on etcd and Ceph RADOS) as a
 filesystem: top-level directories are buckets, files are objects, user.* xattrs are
 their omap. Objects run Lua object classes; changes become S3-style events published
 to NATS by per-bucket Lua scripts.
EOF
# No maintainer scripts: systemd loads a new unit file on first use, and a package with a
# postrm stays in dpkg's "config-files" state after `dpkg -r` (it would leave a trace).
deb="$out/lunafs_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$pkg" "$deb" >&2
echo "$deb"
