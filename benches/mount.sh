# Sourced by the single-mount benchmarks (calls.sh, scale.sh): builds the release binary,
# checks for root (drop_caches), and mounts a fresh store at $BASE/mnt, unmounted and removed
# with $BASE on exit. Sets BIN (the binary) and MNT (the mountpoint).
BIN=$(contrib/release-bin.sh)
[ "$(id -u)" -eq 0 ] || { echo "run as root (drop_caches)" >&2; exit 1; }
MNT="$BASE/mnt"
cleanup() {
  if mountpoint -q "$MNT"; then "$BIN" umount "$MNT" || true; fi
  rm -rf "$BASE"
}
trap cleanup EXIT
cleanup
mkdir -p "$MNT"
"$BIN" mount "$BASE/store" "$MNT"
