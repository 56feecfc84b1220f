//! Request counters of a mount, read through `/.lunafs/stats` and `lunafs status`.
//! One relaxed atomic increment per request: cheap enough to always be on.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

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
}

pub struct Stats {
    started: Instant,
    calls: [AtomicU64; OPS.len()],
    errors: [AtomicU64; OPS.len()],
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
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            handler_calls: AtomicU64::new(0),
            handler_failures: AtomicU64::new(0),
        }
    }

    pub fn call(&self, op: Op) {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, op: Op) {
        self.errors[op as usize].fetch_add(1, Ordering::Relaxed);
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

    pub fn wrote(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
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
        let total_errors: u64 = self.errors.iter().map(load).sum();
        let _ = writeln!(s, "  \"errors_total\": {total_errors},");
        for (label, counters) in [("ops", &self.calls), ("errors", &self.errors)] {
            let _ = write!(s, "  \"{label}\": {{");
            for (i, (_, name)) in OPS.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(s, "{sep}\"{name}\": {}", load(&counters[i]));
            }
            s.push_str(if label == "ops" { "},\n" } else { "}\n" });
        }
        s.push_str("}\n");
        s
    }
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
        s.call(Op::Write);
        s.call(Op::Write);
        s.error(Op::Lookup);
        let j = s.to_json(&[("store", json_str("/a \"b\""))]);
        assert!(j.contains("\"store\": \"/a \\\"b\\\"\""), "{j}");
        assert!(j.contains("\"write\": 2"), "{j}");
        assert!(j.contains("\"errors_total\": 1"), "{j}");
    }
}
