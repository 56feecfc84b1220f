#!/usr/bin/env bash
# Installs lunafs on this host: the binary (/usr/local/bin/lunafs), the mount helper
# (/usr/sbin/mount.lunafs and mount.fuse.lunafs, for `mount -t fuse.lunafs` and fstab), the
# systemd unit (lunafs@.service), an example /etc/lunafs/lunafs.toml (kept if present), the
# man pages (man lunafs, man lunafs-mount, ...) and bash/zsh/fish completions.
#   contrib/install.sh [--bin PATH]    (default: build release and install that)
#   contrib/install.sh --helpers       (only the mount helper, unit and config; for tests)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  --bin) install -m 755 "$2" /usr/local/bin/lunafs ;;
  --helpers) ;;
  *) install -m 755 "$(contrib/release-bin.sh)" /usr/local/bin/lunafs ;;
esac
if [ "${1:-}" != "--helpers" ]; then
  share=/usr/local/share
  install -d "$share/man/man1" "$share/bash-completion/completions" \
    "$share/zsh/site-functions" "$share/fish/vendor_completions.d"
  /usr/local/bin/lunafs manpages "$share/man/man1"
  /usr/local/bin/lunafs completions bash > "$share/bash-completion/completions/lunafs"
  /usr/local/bin/lunafs completions zsh > "$share/zsh/site-functions/_lunafs"
  /usr/local/bin/lunafs completions fish > "$share/fish/vendor_completions.d/lunafs.fish"
  command -v mandb >/dev/null && mandb -q "$share/man" 2>/dev/null || true
fi
install -m 755 contrib/mount.lunafs /usr/sbin/mount.lunafs
ln -sf mount.lunafs /usr/sbin/mount.fuse.lunafs
install -d /etc/lunafs /etc/systemd/system /usr/local/share/doc/lunafs
[ -e /etc/lunafs/lunafs.toml ] || install -m 644 contrib/lunafs.toml /etc/lunafs/lunafs.toml
install -m 644 systemd/lunafs@.service /etc/systemd/system/lunafs@.service
install -m 644 README.md /usr/local/share/doc/lunafs/README.md
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
[ "${1:-}" = "--helpers" ] || echo "installed $(/usr/local/bin/lunafs --version)"
