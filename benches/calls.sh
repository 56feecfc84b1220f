#!/usr/bin/env bash
# Object-class benchmark (issue: object classes):
#  1. round trip of a no-op handler: through /.lunafs/call (one open file, many requests),
#     through setxattr(2) (what `setfattr -n user.cls.C.M` does, without the process), and
#     through the `lunafs call` CLI (a process per call): calls/s, p50 and p99 latency.
#  2. an omap-increment handler (counter.incr) from 1 and 8 clients, one call per round trip
#     and 16 pipelined (one batch of requests per write on /.lunafs/call), against Redis's
#     EVALSHA of an INCR the same ways (redis-benchmark -P, a private redis-server on
#     loopback), same run.
#  3. MD5 of a 256 MiB object: in place (`lunafs call FILE md5.digest`) against reading it
#     through the mount and hashing in the client (md5sum), cold cache: time, and the bytes
#     that crossed the FUSE boundary (from /.lunafs/stats).
#
#   benches/calls.sh [--quick]     (--quick: fewer calls, a 64 MiB object)
# Needs root (drop_caches), python3 and redis-server (contrib/install-deps.sh).
# Works under $BENCH_DIR (default /var/tmp/lunafs-calls).
set -euo pipefail
cd "$(dirname "$0")/.."
CALLS=5000; CLI_CALLS=300; MB=256
if [ "${1:-}" = "--quick" ]; then CALLS=1000; CLI_CALLS=50; MB=64; fi
BASE=${BENCH_DIR:-/var/tmp/lunafs-calls}
source benches/mount.sh
mkdir "$MNT/b"
echo x > "$MNT/b/obj"
cat > "$BASE/noop.lua" <<'EOF'
function noop(input, output) end
objclass.register(noop)
EOF
"$BIN" class put -m "$MNT" "$BASE/noop.lua"
"$BIN" class put -m "$MNT" lua/classes/md5.lua

echo "## handler call round trip (no-op handler)"
echo
echo "| path | calls | calls/s | p50 (µs) | p99 (µs) |"
echo "|---|---|---|---|---|"
python3 - "$MNT" "$CALLS" "$CLI_CALLS" "$BIN" <<'PY'
import os, subprocess, sys, time
mnt, n, n_cli, binary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
obj = f"{mnt}/b/obj"

def report(name, lat):
    lat.sort()
    total = sum(lat)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
    print(f"| {name} | {len(lat)} | {len(lat) / total:.0f} | {p(0.50):.0f} | {p(0.99):.0f} |")

# Control file: one open file, request then response, n times.
fd = os.open(f"{mnt}/.lunafs/call", os.O_RDWR)
req = b"exec noop.noop 0 b/obj\n"
lat = []
for _ in range(n):
    t = time.perf_counter()
    os.write(fd, req)
    resp = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        resp += chunk
    lat.append(time.perf_counter() - t)
    assert resp.startswith(b"0 "), resp
os.close(fd)
report("control file (/.lunafs/call)", lat)

lat = []
for _ in range(n):
    t = time.perf_counter()
    os.setxattr(obj, "user.cls.noop.noop", b"")
    lat.append(time.perf_counter() - t)
report("setxattr user.cls.noop.noop", lat)

lat = []
for _ in range(n_cli):
    t = time.perf_counter()
    subprocess.run([binary, "call", obj, "noop.noop"], check=True, stdout=subprocess.DEVNULL)
    lat.append(time.perf_counter() - t)
report("CLI (lunafs call, a process per call)", lat)
PY

echo
echo "## omap increment: a lunafs handler against Redis EVALSHA of INCR, same run"
echo
cat > "$BASE/counter.lua" <<'EOF'
function incr(input, output)
  local ok, v = pcall(objclass.map_get_val, "n")
  local n = (ok and tonumber(v:str()) or 0) + 1
  objclass.map_set_val("n", tostring(n))
  output:append(tostring(n))
end
objclass.register(incr)
EOF
"$BIN" class put -m "$MNT" "$BASE/counter.lua"
# Redis on a free loopback port, without persistence (lunafs commits every call).
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
  --daemonize yes --pidfile "$BASE/redis.pid" --logfile "$BASE/redis.log"
stop_redis() {
  if [ -e "$BASE/redis.pid" ]; then kill "$(cat "$BASE/redis.pid")" || true; fi
  cleanup
}
trap stop_redis EXIT
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
SHA=$(redis-cli -p "$REDIS_PORT" script load "return redis.call('INCR', KEYS[1])")
echo "| system | clients | pipeline | calls | calls/s | p50 (µs) | p99 (µs) |"
echo "|---|---|---|---|---|---|---|"
for pipeline in 1 16; do
  for clients in 1 8; do
    python3 benches/calls_clients.py "$MNT" "$CALLS" "$clients" "$pipeline"
    total=$((CALLS * clients))
    redis-benchmark -p "$REDIS_PORT" -c "$clients" -P "$pipeline" -n "$total" --csv \
      evalsha "$SHA" 1 k 2>/dev/null |
      python3 benches/calls_clients.py --redis "$clients" "$pipeline" "$total"
  done
done
# Every EVALSHA ran: 1 + 8 clients' worth of increments, unpipelined and pipelined.
[ "$(redis-cli -p "$REDIS_PORT" get k)" -eq $((CALLS * 18)) ]

echo
echo "## MD5 of a ${MB} MiB object, cold cache"
echo
dd if=/dev/urandom of="$MNT/b/big" bs=1M count="$MB" status=none
sync
python3 - "$MNT" "$BIN" <<'PY'
import json, subprocess, sys, time
mnt, binary = sys.argv[1], sys.argv[2]
obj = f"{mnt}/b/big"

def stats():
    with open(f"{mnt}/.lunafs/stats") as f:
        return json.load(f)

def drop():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")

def run(name, cmd):
    drop()
    before = stats()["bytes_read"]
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True).stdout.split()[0].decode()
    elapsed = time.perf_counter() - t
    moved = stats()["bytes_read"] - before
    return name, elapsed, moved, out

rows = [run("in place: lunafs call md5.digest", [binary, "call", obj, "md5.digest"]),
        run("client: md5sum through the mount", ["md5sum", obj])]
assert rows[0][3] == rows[1][3], rows
print("| method | time (s) | bytes through FUSE | digest |")
print("|---|---|---|---|")
for name, elapsed, moved, digest in rows:
    print(f"| {name} | {elapsed:.3f} | {moved} | {digest[:12]}… |")
PY
