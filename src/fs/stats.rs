//! Request counters of a mount, read through `/.lunafs/stats`, `lunafs status` and the
//! Prometheus exporter (`crate::metrics`): requests and errors per FUSE operation, errors per
//! errno, latency histograms per operation and of handler calls, bytes moved.
//! A few relaxed atomic increments per request: cheap enough to always be on.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The FUSE operations counted, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lookup,
    Getattr,
    Setattr,
    Readlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Release,
    Fsync,
    Opendir,
    Readdir,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Access,
    Create,
    Fallocate,
}

const OPS: [(Op, &str); 26] = [
    (Op::Lookup, "lookup"),
    (Op::Getattr, "getattr"),
    (Op::Setattr, "setattr"),
    (Op::Readlink, "readlink"),
    (Op::Mknod, "mknod"),
    (Op::Mkdir, "mkdir"),
    (Op::Unlink, "unlink"),
    (Op::Rmdir, "rmdir"),
    (Op::Symlink, "symlink"),
    (Op::Rename, "rename"),
    (Op::Link, "link"),
    (Op::Open, "open"),
    (Op::Read, "read"),
    (Op::Write, "write"),
    (Op::Release, "release"),
    (Op::Fsync, "fsync"),
    (Op::Opendir, "opendir"),
    (Op::Readdir, "readdir"),
    (Op::Statfs, "statfs"),
    (Op::Setxattr, "setxattr"),
    (Op::Getxattr, "getxattr"),
    (Op::Listxattr, "listxattr"),
    (Op::Removexattr, "removexattr"),
    (Op::Access, "access"),
    (Op::Create, "create"),
    (Op::Fallocate, "fallocate"),
];

impl Op {
    pub fn name(self) -> &'static str {
        OPS[self as usize].1
    }

    /// Every operation, in report order.
    pub fn all() -> impl Iterator<Item = Op> {
        OPS.iter().map(|(op, _)| *op)
    }
}

/// Errnos counted one by one (Linux's are below 134); any other is counted as 0.
const ERRNOS: usize = 134;

/// Upper bounds of the latency buckets, in seconds: 10 µs to 10 s, about three per decade.
pub const LATENCY_BOUNDS: [f64; 19] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram of atomics: observing is a few relaxed increments, no lock.
pub struct Latency {
    /// Per bucket (not cumulative); the last counts what exceeds every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

/// A snapshot of a `Latency`: sum in seconds, count, per-bucket counts by upper bound (the
/// last bound `f64::INFINITY`: the overflow bucket, `le="+Inf"`).
pub struct LatencySnapshot {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl Latency {
    fn new() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        LatencySnapshot {
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// Times one request from its start to the end of its handler (`Stats::call`).
pub struct Timing<'a> {
    stats: &'a Stats,
    started: Started,
}

/// When a request started, carried by a job that answers it later (`Stats::answered`).
pub struct Started {
    op: Op,
    at: Instant,
}

impl Timing<'_> {
    /// The request is answered later, by a job: its latency is taken then.
    pub fn hand_off(self) -> Started {
        let this = std::mem::ManuallyDrop::new(self);
        Started {
            op: this.started.op,
            at: this.started.at,
        }
    }
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        let s = &self.started;
        self.stats.latency[s.op as usize].observe(s.at.elapsed());
    }
}

pub struct Stats {
    started: Instant,
    calls: [AtomicU64; OPS.len()],
    latency: [Latency; OPS.len()],
    /// Failed requests by operation and errno, at `op * ERRNOS + errno`: a failure is one
    /// relaxed increment too (negative lookups, before every create, are frequent).
    errnos: Box<[AtomicU64]>,
    handler_latency: Latency,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    handler_calls: AtomicU64,
    handler_failures: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            started: Instant::now(),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| Latency::new()),
            errnos: (0..OPS.len() * ERRNOS).map(|_| AtomicU64::new(0)).collect(),
            handler_latency: Latency::new(),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            handler_calls: AtomicU64::new(0),
            handler_failures: AtomicU64::new(0),
        }
    }

    /// Counts a request of `op`; its latency is taken when the returned guard drops.
    #[must_use = "the request is timed until the guard drops"]
    pub fn call(&self, op: Op) -> Timing<'_> {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
        Timing {
            stats: self,
            started: Started {
                op,
                at: Instant::now(),
            },
        }
    }

    /// A request handed off (`Timing::hand_off`) is answered now.
    pub fn answered(&self, started: Started) {
        self.latency[started.op as usize].observe(started.at.elapsed());
    }

    /// Counts a failed request of `op` that the caller sees as `errno`.
    pub fn error(&self, op: Op, errno: i32) {
        let errno = usize::try_from(errno)
            .ok()
            .filter(|&e| e < ERRNOS)
            .unwrap_or(0);
        self.errnos[op as usize * ERRNOS + errno].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A handler call ended; `ok` when its result was >= 0.
    pub fn handler(&self, ok: bool) {
        self.handler_calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.handler_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How long one handler call that ran took (run and commit), whatever its result.
    pub fn handler_took(&self, took: Duration) {
        self.handler_latency.observe(took);
    }

    pub fn wrote(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Everything counted, for the exporter.
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            started: self.started,
            ops: Op::all()
                .map(|op| OpSnapshot {
                    name: op.name(),
                    calls: load(&self.calls[op as usize]),
                    latency: self.latency[op as usize].snapshot(),
                })
                .collect(),
            errnos: self
                .errnos
                .iter()
                .enumerate()
                .map(|(i, n)| (i, load(n)))
                .filter(|&(_, n)| n > 0)
                .map(|(i, n)| (OPS[i / ERRNOS].1, (i % ERRNOS) as i32, n))
                .collect(),
            handler_calls: load(&self.handler_calls),
            handler_failures: load(&self.handler_failures),
            handler_latency: self.handler_latency.snapshot(),
            bytes_read: load(&self.bytes_read),
            bytes_written: load(&self.bytes_written),
        }
    }

    /// The counters as one JSON object; `extra` are further top-level `"key": value` pairs
    /// (already JSON-encoded values).
    pub fn to_json(&self, extra: &[(&str, String)]) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::from("{\n");
        for (k, v) in extra {
            let _ = writeln!(s, "  \"{k}\": {v},");
        }
        let _ = writeln!(
            s,
            "  \"uptime_seconds\": {},",
            self.started.elapsed().as_secs()
        );
        let _ = writeln!(s, "  \"bytes_read\": {},", load(&self.bytes_read));
        let _ = writeln!(s, "  \"bytes_written\": {},", load(&self.bytes_written));
        let _ = writeln!(s, "  \"handler_calls\": {},", load(&self.handler_calls));
        let _ = writeln!(
            s,
            "  \"handler_failures\": {},",
            load(&self.handler_failures)
        );
        let calls: Vec<u64> = self.calls.iter().map(load).collect();
        let errors: Vec<u64> = self
            .errnos
            .chunks(ERRNOS)
            .map(|row| row.iter().map(load).sum())
            .collect();
        let total_errors: u64 = errors.iter().sum();
        let _ = writeln!(s, "  \"errors_total\": {total_errors},");
        for (label, counters) in [("ops", &calls), ("errors", &errors)] {
            let _ = write!(s, "  \"{label}\": {{");
            for (i, (_, name)) in OPS.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(s, "{sep}\"{name}\": {}", counters[i]);
            }
            s.push_str(if label == "ops" { "},\n" } else { "}\n" });
        }
        s.push_str("}\n");
        s
    }
}

/// One operation's counters.
pub struct OpSnapshot {
    pub name: &'static str,
    pub calls: u64,
    pub latency: LatencySnapshot,
}

/// The counters of a mount at one moment.
pub struct Snapshot {
    pub started: Instant,
    pub ops: Vec<OpSnapshot>,
    /// (operation, errno, failed requests).
    pub errnos: Vec<(&'static str, i32, u64)>,
    pub handler_calls: u64,
    pub handler_failures: u64,
    pub handler_latency: LatencySnapshot,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// A string as a JSON string literal.
pub fn json_str(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_table_matches_the_enum_order() {
        for (i, (op, _)) in OPS.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?}");
        }
    }

    #[test]
    fn counters_render_as_json() {
        let s = Stats::new();
        drop(s.call(Op::Write));
        drop(s.call(Op::Write));
        s.error(Op::Lookup, libc::ENOENT);
        let j = s.to_json(&[("store", json_str("/a \"b\""))]);
        assert!(j.contains("\"store\": \"/a \\\"b\\\"\""), "{j}");
        assert!(j.contains("\"write\": 2"), "{j}");
        assert!(j.contains("\"errors_total\": 1"), "{j}");
    }

    #[test]
    fn latency_falls_in_the_first_bucket_at_or_above_it() {
        let l = Latency::new();
        l.observe(Duration::from_micros(10)); // exactly on the first bound
        l.observe(Duration::from_micros(11));
        l.observe(Duration::from_secs(60)); // past every bound
        let snap = l.snapshot();
        assert_eq!(snap.count, 3);
        assert_eq!(snap.buckets[0], (1e-5, 1));
        assert_eq!(snap.buckets[1], (2.5e-5, 1));
        assert_eq!(snap.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((snap.sum - 60.000021).abs() < 1e-9, "{}", snap.sum);
    }

    #[test]
    fn failures_are_counted_by_operation_and_errno() {
        let s = Stats::new();
        s.error(Op::Lookup, libc::ENOENT);
        s.error(Op::Lookup, libc::ENOENT);
        s.error(Op::Mkdir, libc::EEXIST);
        let snap = s.snapshot();
        assert_eq!(
            snap.errnos,
            vec![("lookup", libc::ENOENT, 2), ("mkdir", libc::EEXIST, 1)]
        );
    }
}
