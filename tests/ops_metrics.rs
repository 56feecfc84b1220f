//! The Prometheus exporter of a real mount, scraped with curl and checked by Prometheus's own
//! `promtool check metrics` (Debian package prometheus); and `lunafs status`, as a person
//! and as a script read it, healthy and not.

mod common;

use std::fs;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::nats::{all_events, Nats};
use common::{TestFs, LUNAFS};

/// GET `url` with curl; (HTTP status, body).
fn curl(url: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl (apt install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `promtool check metrics` of `text`: its complaints, none when the text is clean.
fn promtool(text: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The value of the sample `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics_url(fs: &TestFs) -> String {
    let addr = fs.stats()["metrics"].as_str().unwrap().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    format!("http://{addr}/metrics")
}

#[test]
fn a_scrape_of_a_real_mount_passes_promtool_and_counts_what_happened() {
    let nats = Nats::start();
    let down = Nats::stopped();
    let fs = TestFs::with_options("metrics=0");
    let b = fs.bucket("b");
    fs.put_topic("up", &nats, "m.up", "");
    fs.put_topic("down", &down, "m.down", "");
    fs.put_notifications(
        "b",
        &format!("{}{}", all_events("u", "up"), all_events("d", "down")),
    );
    fs::write(b.join("f"), b"12345").unwrap();
    let _ = fs::metadata(b.join("missing"));
    xattr::set(b.join("f"), "user.k", b"v").unwrap();
    fs.put_class("incr", common::INCR_CLASS);
    assert_eq!(fs.call("b/f", "incr.incr", b"").result, 0);
    // Until the event reached the running server and the stopped one was tried.
    let url = metrics_url(&fs);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let (code, text) = curl(&url, &[]);
        assert_eq!(code, 200, "{text}");
        let up = sample(&text, r#"lunafs_topic_delivered_events_total{topic="up"}"#);
        let down = sample(&text, r#"lunafs_nats_connected{topic="down"}"#);
        let failed = sample(&text, r#"lunafs_topic_failures_total{topic="down"}"#);
        if up >= Some(1.0) && down == Some(0.0) && failed >= Some(1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let checked = promtool(&text);
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let at_least = |series: &str, min: f64| {
        let v = sample(&text, series);
        assert!(v >= Some(min), "{series} = {v:?}\n{text}");
    };
    at_least(r#"lunafs_fuse_requests_total{op="mkdir"}"#, 1.0);
    at_least(r#"lunafs_fuse_requests_total{op="setxattr"}"#, 1.0);
    at_least(
        r#"lunafs_fuse_errors_total{op="lookup",errno="ENOENT"}"#,
        1.0,
    );
    at_least(
        r#"lunafs_fuse_request_duration_seconds_count{op="write"}"#,
        1.0,
    );
    at_least(
        r#"lunafs_fuse_request_duration_seconds_bucket{op="write",le="+Inf"}"#,
        1.0,
    );
    assert!(
        !text.contains("e+308"),
        "the overflow bucket is +Inf\n{text}"
    );
    at_least("lunafs_written_bytes_total", 5.0);
    at_least("lunafs_handler_calls_total", 1.0);
    assert_eq!(
        sample(&text, "lunafs_handler_call_duration_seconds_count"),
        sample(&text, "lunafs_handler_calls_total"),
        "every call that ran is timed\n{text}"
    );
    at_least(r#"lunafs_nats_connected{topic="up"}"#, 1.0);
    at_least(r#"lunafs_topic_failures_total{topic="down"}"#, 1.0);
    at_least("lunafs_events_pending", 1.0); // the one bound for the stopped server waits
    at_least("lunafs_store_size_bytes", 1.0);
    assert!(text.contains("lunafs_backend_up{backend="), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("lunafs_"), "{line}");
    }
    // The shipped Grafana dashboard has a panel for every family.
    let dashboard = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/grafana-dashboard.json"
    ))
    .unwrap();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(dashboard.contains(name), "no dashboard panel shows {name}");
    }
}

#[test]
fn the_exporter_speaks_openmetrics_when_asked_and_only_serves_metrics() {
    let fs = TestFs::with_options("metrics=0");
    let url = metrics_url(&fs);
    // Families with nothing to show yet (no topics) are still clean.
    let (code, text) = curl(&url, &[]);
    assert_eq!(code, 200);
    let checked = promtool(&text);
    assert!(checked.status.success(), "{checked:?}\n{text}");
    let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
    let (code, text) = curl(&url, &["-H", accept]);
    assert_eq!(code, 200);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let inf = r#"lunafs_fuse_request_duration_seconds_bucket{le="+Inf",op="lookup"}"#;
    assert!(text.contains(inf) && !text.contains("e+308"), "{text}");
    assert!(
        text.contains("# TYPE lunafs_fuse_requests counter"),
        "{text}"
    );
    let (code, _) = curl(&url.replace("/metrics", "/other"), &[]);
    assert_eq!(code, 404);
    let (code, _) = curl(&url, &["-X", "POST"]);
    assert_eq!(code, 405);
    // A client that connects and says nothing is cut off; the next scrape is answered.
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let _idle = std::net::TcpStream::connect(addr).unwrap();
    let (code, _) = curl(&url, &[]);
    assert_eq!(code, 200);
}

/// `lunafs mount` with `option`: it fails with a message containing `says`, nothing mounted.
fn mount_refused(option: &str, says: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let store = dir.path().join("s");
    let out = Command::new(LUNAFS)
        .args(["mount", store.to_str().unwrap(), mnt.to_str().unwrap()])
        .args(["-o", option])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{option}: mounted");
    assert!(err.contains(says), "{option}: {err}");
    assert!(!common::is_mounted(&mnt), "{option}");
}

#[test]
fn a_host_name_or_a_taken_port_for_metrics_mounts_nothing() {
    mount_refused("metrics=localhost:9100", "metrics=localhost:9100");
    mount_refused("metrics=99999", "metrics=99999: not a port number");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    mount_refused(&format!("metrics={port}"), &format!("listening on {addr}"));
}

fn status(args: &[&str]) -> Output {
    Command::new(LUNAFS)
        .arg("status")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn status_is_short_for_people_and_one_json_document_for_scripts() {
    let fs = TestFs::with_options("metrics=0");
    let b = fs.bucket("b");
    fs::write(b.join("f"), b"12345").unwrap();
    let mnt = fs.mnt.to_str().unwrap();
    let out = status(&["--interval", "0.2", mnt]);
    common::succeeded(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("{mnt}: healthy\n")), "{text}");
    for want in [
        "  backend ",
        "  uptime ",
        " ops/s, ",
        "  events ",
        "  metrics    http://",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "{line:?}");
    }
    let out = status(&["--json", "--interval", "0.2", mnt]);
    common::succeeded(&out);
    let raw = String::from_utf8(out.stdout).unwrap();
    assert!(raw.ends_with("}\n"), "{raw}");
    let doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["healthy"], true);
    assert_eq!(doc["stats"]["bytes_written"], 5);
    assert!(doc["ops_total"].as_u64().unwrap() > 0, "{doc}");
    assert!(doc["ops_per_second"].is_number(), "{doc}");
    assert_eq!(doc["backend"]["answering"], true);
    // Reading the stats is not counted in them: another status finds the same opens and reads.
    let again = status(&["--json", "--interval", "0.2", mnt]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    for op in ["lookup", "open", "read", "release"] {
        assert_eq!(doc["stats"]["ops"][op], again["stats"]["ops"][op], "{op}");
    }

    let out = status(&["/tmp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a lunafs mount"));
    let out = status(&["--interval", "soon", mnt]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn status_of_a_mount_whose_daemon_died_says_so_and_exits_1() {
    let mut fs = TestFs::mount();
    fs.bucket("b");
    fs.kill9_leaving_mount();
    let mnt = fs.mnt.to_str().unwrap().to_string();
    let out = status(&[&mnt]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("{mnt}: NOT HEALTHY\n")), "{text}");
    assert!(text.contains("not answering"), "{text}");
    let out = status(&["--json", &mnt]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&doc["healthy"], &doc["answering"]),
        (&false.into(), &false.into())
    );
    assert!(
        doc["error"].as_str().unwrap().contains("not answering"),
        "{doc}"
    );
    fs.kill9(); // detaches the dead mount
}
