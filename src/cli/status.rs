//! `lunafs status [--json] MOUNTPOINT`: how a mount is doing, from two readings of its
//! `/.lunafs/stats` an interval apart (for the rates; the daemon leaves the readings' own
//! requests uncounted). By default a summary for a person in
//! at most 80 columns; with `--json` one JSON document (schema below and in the README).
//! Exit status: 0 healthy, 1 not answering (the mount or its backend), 2 usage errors.
//!
//! JSON schema 1: `schema` (1), `mountpoint`, `healthy` (the mount and its backend answer),
//! `answering` (the mount answers), `error` (why not, or null), and when answering:
//! `store`, `backend` {`name`, `answering`, `read_ms`, `requests`}, `leader`, `uptime_seconds`,
//! `interval_seconds`, `ops_per_second`, `errors_per_second`, `ops_total`, `errors_total`,
//! `open_files`, `handler_calls`, `handler_failures`, `events` {`pending`, `queued`,
//! `delivered`, `retried`, `dropped`, `triggers_run`, `triggers_failed`}, `topics` {NAME:
//! {`state`, `delivered`, `published`, `failures`, `retried`, `dropped`, `last_error`,
//! `last_error_time`}}, `metrics` (address or null), and
//! `stats`: the second reading of `/.lunafs/stats` itself.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Longest wait for one reading: a hung daemon must not hang `status`.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const WIDTH: usize = 80;

/// Runs `lunafs status`; Ok holds the exit status (0 healthy, 1 not).
pub fn status(mp: &Path, json_out: bool, interval: Duration) -> Result<i32> {
    let store = super::mounted_store(mp)?
        .ok_or_else(|| Error::Usage(format!("{} is not a lunafs mount", mp.display())))?;
    // The daemon does not count the requests that read its stats: an idle mount shows 0.
    let readings = read_stats(mp).and_then(|first| {
        std::thread::sleep(interval);
        Ok((first, read_stats(mp)?))
    });
    let report = match readings {
        Ok((first, second)) => summary(mp, &first, &second, interval),
        Err(why) => json!({
            "schema": 1,
            "mountpoint": mp.display().to_string(),
            "store": store.display().to_string(),
            "healthy": false,
            "answering": false,
            "error": why,
        }),
    };
    match json_out {
        true => println!("{report}"),
        false => print!("{}", human(&report)),
    }
    Ok(if report["healthy"] == true { 0 } else { 1 })
}

/// One reading of the stats file, or why there is none.
fn read_stats(mp: &Path) -> std::result::Result<Value, String> {
    let stats_path = mp.join(".lunafs/stats");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&stats_path));
    });
    match rx.recv_timeout(ANSWER_WITHIN) {
        Ok(Ok(text)) => serde_json::from_str(&text)
            .map_err(|e| format!("{}/.lunafs/stats is not JSON: {e}", mp.display())),
        Ok(Err(e)) => Err(format!("{} is not answering: {e}", mp.display())),
        Err(_) => Err(format!(
            "{} did not answer within {} s (is its lunafs process stuck?)",
            mp.display(),
            ANSWER_WITHIN.as_secs()
        )),
    }
}

fn ops_total(stats: &Value) -> u64 {
    let ops = stats["ops"].as_object();
    ops.map_or(0, |o| o.values().filter_map(Value::as_u64).sum())
}

/// The status document (schema 1) from two readings `interval` apart.
fn summary(mp: &Path, first: &Value, second: &Value, interval: Duration) -> Value {
    let secs = interval.as_secs_f64().max(1e-3);
    let num = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let s = second;
    let answering = s["backend_answers"] == true;
    let d = &s["delivery"];
    json!({
        "schema": 1,
        "mountpoint": mp.display().to_string(),
        "healthy": answering,
        "answering": true,
        "error": if answering { Value::Null } else { json!("the backend does not answer") },
        "store": s["store"],
        "backend": {
            "name": s["backend"],
            "answering": answering,
            "read_ms": s["backend_read_ms"],
            "requests": s["backend_requests"],
        },
        "leader": s["leader"],
        "uptime_seconds": s["uptime_seconds"],
        "interval_seconds": secs,
        "ops_per_second": rate(ops_total(first), ops_total(s)),
        "errors_per_second": rate(num(first, "errors_total"), num(s, "errors_total")),
        "ops_total": ops_total(s),
        "errors_total": s["errors_total"],
        "open_files": s["open_files"],
        "handler_calls": s["handler_calls"],
        "handler_failures": s["handler_failures"],
        "events": {
            "pending": s["events_pending"],
            "queued": s["events_queued"],
            "delivered": d["delivered"],
            "retried": d["retried"],
            "dropped": d["dropped"],
            "triggers_run": d["triggers_run"],
            "triggers_failed": d["triggers_failed"],
        },
        "topics": d["topics"],
        "metrics": s["metrics"],
        "stats": s,
    })
}

/// "1h 02m 03s", "4m 05s", "6s".
fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// A value as text without JSON quotes.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The summary for a person: one line per subject, none wider than `WIDTH`.
fn human(r: &Value) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let l = format!("  {label:<10} {value}");
        let _ = writeln!(out, "{}", clip(&l));
    };
    let verdict = if r["healthy"] == true {
        "healthy"
    } else {
        "NOT HEALTHY"
    };
    let mut head = clip(&format!("{}: {verdict}", text(&r["mountpoint"])));
    if let Value::String(why) = &r["error"] {
        head.push('\n');
        head.push_str(&wrap("  error      ", why));
    }
    if r["answering"] != true {
        return format!("{head}\n");
    }
    let b = &r["backend"];
    let answers = match b["answering"] == true {
        true => format!("answering, {} ms", text(&b["read_ms"])),
        false => "NOT answering".into(),
    };
    line("store", text(&r["store"]));
    line("backend", format!("{} ({answers})", text(&b["name"])));
    let role = if r["leader"] == true { ", leader" } else { "" };
    let up = duration(r["uptime_seconds"].as_u64().unwrap_or(0));
    line("uptime", format!("{up}{role}"));
    line(
        "requests",
        format!(
            "{:.1} ops/s, {:.1} errors/s over {} s; {} ops, {} errors in all",
            r["ops_per_second"].as_f64().unwrap_or(0.0),
            r["errors_per_second"].as_f64().unwrap_or(0.0),
            r["interval_seconds"],
            text(&r["ops_total"]),
            text(&r["errors_total"]),
        ),
    );
    line("open", format!("{} files", text(&r["open_files"])));
    let (calls, failed) = (text(&r["handler_calls"]), text(&r["handler_failures"]));
    let e = &r["events"];
    let (run, run_failed) = (text(&e["triggers_run"]), text(&e["triggers_failed"]));
    line(
        "handlers",
        format!("{calls} calls, {failed} failed; triggers: {run} run, {run_failed} failed"),
    );
    line(
        "events",
        format!(
            "{} pending; {} delivered, {} retried, {} dropped",
            text(&e["pending"]),
            text(&e["delivered"]),
            text(&e["retried"]),
            text(&e["dropped"]),
        ),
    );
    for (name, t) in r["topics"].as_object().into_iter().flatten() {
        let mut v = format!(
            "{name}: {}, {} delivered, {} failures",
            text(&t["state"]),
            text(&t["delivered"]),
            text(&t["failures"])
        );
        if let Value::String(why) = &t["last_error"] {
            let _ = write!(v, "; last error: {why}");
        }
        line("topic", v);
    }
    if let Value::String(a) = &r["metrics"] {
        line("metrics", format!("http://{a}/metrics"));
    }
    format!("{head}\n{out}")
}

/// `text` after `label`, wrapped at spaces to `WIDTH` columns, continuation lines indented
/// like the first (a word longer than a line stays whole).
fn wrap(label: &str, text: &str) -> String {
    let indent = " ".repeat(label.chars().count());
    let mut out = label.to_string();
    let mut width = label.chars().count();
    for (i, word) in text.split(' ').enumerate() {
        let n = word.chars().count();
        if i > 0 && width + 1 + n > WIDTH {
            out.push('\n');
            out.push_str(&indent);
            width = indent.len();
        } else if i > 0 {
            out.push(' ');
            width += 1;
        }
        out.push_str(word);
        width += n;
    }
    out
}

/// A line cut to `WIDTH` characters, "..." marking the cut.
fn clip(l: &str) -> String {
    match l.chars().count() > WIDTH {
        true => l.chars().take(WIDTH - 3).chain("...".chars()).collect(),
        false => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ops: u64, errors: u64) -> Value {
        json!({
            "store": "/s", "backend": "rocksdb /s", "backend_answers": true,
            "backend_read_ms": 0.1, "backend_requests": 0, "leader": true,
            "uptime_seconds": 3725, "ops": {"lookup": ops, "read": 1},
            "errors_total": errors, "open_files": 2, "handler_calls": 5,
            "handler_failures": 1, "events_pending": 3, "events_queued": 9, "metrics": null,
            "delivery": {"delivered": 6, "retried": 0, "dropped": 0, "topics": {
                "t": {"state": "disconnected", "delivered": 6, "failures": 2,
                      "last_error": "x".repeat(200)}}},
        })
    }

    #[test]
    fn rates_come_from_the_two_readings() {
        let r = summary(
            Path::new("/m"),
            &reading(10, 1),
            &reading(30, 2),
            Duration::from_secs(2),
        );
        assert_eq!(r["ops_per_second"], 10.0);
        assert_eq!(r["errors_per_second"], 0.5);
        assert_eq!(r["ops_total"], 31);
        assert_eq!(r["healthy"], true);
        assert_eq!(r["events"]["pending"], 3);
    }

    #[test]
    fn the_summary_fits_in_80_columns() {
        let r = summary(
            Path::new("/m"),
            &reading(0, 0),
            &reading(5, 0),
            Duration::from_secs(1),
        );
        let h = human(&r);
        assert!(h.starts_with("/m: healthy\n"), "{h}");
        assert!(h.contains("uptime     1h 02m 05s, leader"), "{h}");
        assert!(h.contains("topic      t: disconnected, 6 delivered"), "{h}");
        for l in h.lines() {
            assert!(l.chars().count() <= WIDTH, "{l:?}");
        }
    }

    #[test]
    fn errors_wrap_at_80_columns_and_lose_no_word() {
        let why = format!(
            "{} is not answering: {}",
            "/m".repeat(30),
            "word ".repeat(30)
        );
        let w = wrap("  error      ", why.trim());
        for l in w.lines() {
            assert!(l.chars().count() <= WIDTH, "{l:?}");
            assert!(
                l.starts_with("  error      ") || l.starts_with("             "),
                "{l:?}"
            );
        }
        let words: Vec<&str> = w.split_whitespace().skip(1).collect();
        assert_eq!(words.join(" "), why.trim());
    }

    #[test]
    fn a_mount_not_answering_is_not_healthy() {
        let mut second = reading(5, 0);
        second["backend_answers"] = json!(false);
        let r = summary(
            Path::new("/m"),
            &reading(0, 0),
            &second,
            Duration::from_secs(1),
        );
        assert_eq!(r["healthy"], false);
        assert!(human(&r).contains("backend    rocksdb /s (NOT answering)"));
    }
}
