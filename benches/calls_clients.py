"""Handler calls from N concurrent clients, for benches/calls.sh; one table row per run.

  calls_clients.py MOUNTPOINT CALLS CLIENTS PIPELINE
      CLIENTS processes, each making CALLS calls of counter.incr through its own
      /.lunafs/call file on its own object (calls on one object are serialized, as in
      Ceph), PIPELINE requests per write (one batch), then reading until all PIPELINE
      responses are in; a call's latency is its batch's round trip
  calls_clients.py --redis CLIENTS PIPELINE CALLS
      the same row from redis-benchmark's --csv output on stdin
"""
import csv
import multiprocessing
import os
import sys
import time


def row(system, clients, pipeline, calls, per_second, p50_us, p99_us):
    print(f"| {system} | {clients} | {pipeline} | {calls} | {per_second:.0f} | {p50_us:.0f} "
          f"| {p99_us:.0f} |")


def responses(fd, k):
    """Reads until k responses are in; returns their (result, output) pairs."""
    buf, out = b"", []
    while len(out) < k:
        chunk = os.read(fd, 65536)
        assert chunk, f"end of file after {len(out)} of {k} responses"
        buf += chunk
        while (nl := buf.find(b"\n")) >= 0:
            result, out_len, msg_len = (int(x) for x in buf[:nl].split())
            end = nl + 1 + out_len + msg_len
            if len(buf) < end:
                break
            out.append((result, buf[nl + 1:nl + 1 + out_len]))
            buf = buf[end:]
    assert not buf, buf
    return out


def client(args):
    mnt, n, clients, pipeline, i = args
    name = f"b/counter-{clients}-{pipeline}-{i}"
    open(f"{mnt}/{name}", "w").close()
    fd = os.open(f"{mnt}/.lunafs/call", os.O_RDWR)
    req = f"exec counter.incr 0 {name}\n".encode()
    lat, done = [], 0
    while done < n:
        k = min(pipeline, n - done)
        t = time.perf_counter()
        os.write(fd, req * k)
        got = responses(fd, k)
        lat += [time.perf_counter() - t] * k
        want = [(0, str(done + j + 1).encode()) for j in range(k)]
        assert got == want, got
        done += k
    os.close(fd)
    return lat


def lunafs(mnt, n, clients, pipeline):
    with multiprocessing.Pool(clients) as pool:
        start = time.perf_counter()
        lats = pool.map(client, [(mnt, n, clients, pipeline, i) for i in range(clients)])
        wall = time.perf_counter() - start
    lat = sorted(x for one in lats for x in one)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6
    row("lunafs control file, counter.incr", clients, pipeline, len(lat), len(lat) / wall,
        p(0.5), p(0.99))


def redis(clients, pipeline, calls):
    rows = list(csv.reader(sys.stdin))
    r = dict(zip(rows[0], rows[1]))
    ms = lambda k: float(r[k]) * 1000
    row("Redis EVALSHA of INCR", clients, pipeline, calls, float(r["rps"]),
        ms("p50_latency_ms"), ms("p99_latency_ms"))


if __name__ == "__main__":
    if sys.argv[1] == "--redis":
        redis(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        lunafs(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
