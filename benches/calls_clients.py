"""Handler calls from N concurrent clients, for benches/calls.sh; one table row per run.

  calls_clients.py MOUNTPOINT CALLS CLIENTS   CLIENTS processes, each making CALLS calls of
                                              counter.incr through its own /.lunafs/call file
                                              on its own object (calls on one object are
                                              serialized, as in Ceph)
  calls_clients.py --redis CLIENTS CALLS      the same row from redis-benchmark's --csv output
                                              on stdin
"""
import csv
import multiprocessing
import os
import sys
import time


def row(system, clients, calls, per_second, p50_us, p99_us):
    print(f"| {system} | {clients} | {calls} | {per_second:.0f} | {p50_us:.0f} | {p99_us:.0f} |")


def client(args):
    mnt, n, clients, i = args
    name = f"b/counter-{clients}-{i}"
    open(f"{mnt}/{name}", "w").close()
    fd = os.open(f"{mnt}/.lunafs/call", os.O_RDWR)
    req = f"exec counter.incr 0 {name}\n".encode()
    lat = []
    for k in range(n):
        t = time.perf_counter()
        os.write(fd, req)
        resp = b""
        while chunk := os.read(fd, 4096):
            resp += chunk
        lat.append(time.perf_counter() - t)
        want = str(k + 1).encode()
        assert resp == b"0 %d 0\n" % len(want) + want, resp
    os.close(fd)
    return lat


def lunafs(mnt, n, clients):
    with multiprocessing.Pool(clients) as pool:
        start = time.perf_counter()
        lats = pool.map(client, [(mnt, n, clients, i) for i in range(clients)])
        wall = time.perf_counter() - start
    lat = sorted(x for one in lats for x in one)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
    row("lunafs control file, counter.incr", clients, len(lat), len(lat) / wall, p(0.5), p(0.99))


def redis(clients, calls):
    rows = list(csv.reader(sys.stdin))
    r = dict(zip(rows[0], rows[1]))
    ms = lambda k: float(r[k]) * 1000
    row("Redis EVALSHA of INCR", clients, calls, float(r["rps"]), ms("p50_latency_ms"),
        ms("p99_latency_ms"))


if __name__ == "__main__":
    if sys.argv[1] == "--redis":
        redis(int(sys.argv[2]), int(sys.argv[3]))
    else:
        lunafs(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
