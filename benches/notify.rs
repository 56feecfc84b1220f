//! Notification benchmark (issue: bucket notifications). A release mount, a real nats-server on
//! a loopback port and a real async-nats subscriber in this process, which notes when each
//! event's message arrives; the writer notes when each file's close(2) returned, so latency is
//! close-to-subscriber on one clock. Prints markdown tables (the README's "Notifications").
//!
//!   cargo bench --bench notify                (10,000 files per round, 3 rounds, medians)
//!   cargo bench --bench notify -- --quick     (2,000 files, 1 round)
//!
//! Workloads: create+write N x 4 KiB files (one close each, 10 directories) in a bucket without
//! and with a notification (default script, core NATS), alternating, and the events/s from the
//! first create to the last message; a backlog of N events queued while the topic's server is
//! unreachable, then drained (core NATS and JetStream); close-to-subscriber latency with one
//! file at a time; the create rate while a slow and a failing script run.
//! Needs root (FUSE mount), fuse3 and nats-server (contrib/install-deps.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::nats::{free_port, Nats, Sub};
use common::TestFs;
use futures_util::StreamExt;

const WAIT: Duration = Duration::from_secs(300);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (files, rounds, paced) = if quick {
        (2000, 1, 200)
    } else {
        (10_000, 3, 1000)
    };
    let nats = Nats::start();
    let arrivals = Arrivals::subscribe(&nats.url(), "bench.>");
    let fs = TestFs::quiet("");
    fs.bucket("quiet");
    fs.bucket("watched");
    topic(&fs, "t", &nats.url(), "bench.core", "");
    notify_all(&fs, "watched", "t");

    // 1. Create rate off vs on, and sustained events/s.
    let (mut off, mut on, mut sustained, mut burst) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        off.push(rate(
            files,
            create(&fs.path("quiet"), &format!("r{r}"), files).1,
        ));
        let (closed, secs) = create(&fs.path("watched"), &format!("r{r}"), files);
        on.push(rate(files, secs));
        let got = arrivals.collect(&closed, WAIT);
        let start = closed.values().min().unwrap();
        let last = got.iter().map(|(_, a)| *a).max().unwrap();
        sustained.push(rate(files, last.duration_since(*start).as_secs_f64()));
        burst.extend(got.iter().map(|(c, a)| a.duration_since(*c)));
    }

    if std::env::var("ONLY1").is_ok() {
        println!("off {off:?} on {on:?} sustained {sustained:?}");
        return;
    }
    // 2. Backlog drain: events queue while the topic names a port nothing listens on; then
    // the topic is pointed at the server and the queue drains.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let (mut drains, mut queuing) = (Vec::new(), Vec::new());
    for (name, extra) in [
        ("core NATS", ""),
        ("JetStream (acked)", "jetstream = true\n"),
    ] {
        if !extra.is_empty() {
            Sub::new(&nats.url(), "bench.unused").create_stream("BENCH", &["bench.js"]);
        }
        let subject = if extra.is_empty() {
            "bench.core"
        } else {
            "bench.js"
        };
        topic(&fs, "t", &dead, subject, extra);
        let (closed, secs) = create(&fs.path("watched"), &format!("backlog-{subject}"), files);
        queuing.push(rate(files, secs));
        topic(&fs, "t", &nats.url(), subject, extra);
        let got = arrivals.collect(&closed, WAIT);
        let first = got.iter().map(|(_, a)| *a).min().unwrap();
        let last = got.iter().map(|(_, a)| *a).max().unwrap();
        drains.push((name, rate(files, last.duration_since(first).as_secs_f64())));
    }
    topic(&fs, "t", &nats.url(), "bench.core", "");

    // 3. Latency with one file at a time (each waits for its message before the next).
    let mut idle = Vec::new();
    for i in 0..paced {
        let (closed, _) = create(&fs.path("watched"), &format!("paced{i}"), 1);
        idle.extend(
            arrivals
                .collect(&closed, WAIT)
                .iter()
                .map(|(c, a)| a.duration_since(*c)),
        );
    }

    // 4. Create rate while the bucket's script is slow, then while it fails.
    let slow = "local x = 0\nfor i = 1, 200000 do x = x + i end\n\
                nats.publish(topic.subject, event_json)\n";
    fs::write(fs.path(".lunafs/notify/watched.lua"), slow).unwrap();
    let (closed, secs) = create(&fs.path("watched"), "slow", files);
    let slow_create = rate(files, secs);
    let got = arrivals.collect(&closed, WAIT);
    let first = closed.values().min().unwrap();
    let last = got.iter().map(|(_, a)| *a).max().unwrap();
    let slow_events = rate(files, last.duration_since(*first).as_secs_f64());
    // The failing events are dropped after two retries, so the queue is empty again for
    // the trigger workloads.
    topic(&fs, "t", &nats.url(), "bench.core", "max_retries = 2\n");
    fs::write(
        fs.path(".lunafs/notify/watched.lua"),
        "error('failing on purpose')\n",
    )
    .unwrap();
    let failing_create = rate(files, create(&fs.path("watched"), "failing", files).1);
    let stats = fs.stats();
    fs::remove_file(fs.path(".lunafs/notify/watched.lua")).unwrap();
    topic(&fs, "t", &nats.url(), "bench.core", "");
    let deadline = Instant::now() + WAIT;
    while fs.stats()["events_pending"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the failing events were not dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 5. Triggers: each Put runs a handler on its object, whose omap change is published;
    // its arrival marks the trigger done.
    let (trigger_rate, mut trigger_burst, mut trigger_idle) =
        triggers(&fs, &arrivals, files, paced);

    println!("## Notifications ({files} x 4 KiB files per run, median of {rounds})\n");
    println!("| workload | result |\n|---|---|");
    println!(
        "| FUSE create+write, no notification (files/s) | {:.0} |",
        median(&mut off)
    );
    println!(
        "| FUSE create+write, notification on: default script, core NATS (files/s) | {:.0} |",
        median(&mut on)
    );
    println!(
        "| FUSE create+write, notification on, server unreachable: events only queue (files/s) | {:.0} |",
        median(&mut queuing)
    );
    println!(
        "| sustained, first close to last message at the subscriber (events/s) | {:.0} |",
        median(&mut sustained)
    );
    for (name, r) in drains {
        println!("| backlog of {files} drained, {name} (events/s) | {r:.0} |");
    }
    println!(
        "| FUSE create+write, script busy ~{:.1} ms per event (files/s) | {slow_create:.0} |",
        1000.0 / slow_events.max(1.0)
    );
    println!("| events/s with that script | {slow_events:.0} |");
    println!(
        "| FUSE create+write, script failing on every event (files/s) | {failing_create:.0} |"
    );
    println!(
        "| script errors counted by then (`/.lunafs/stats`) | {} |",
        stats["delivery"]["script_errors"]
    );
    println!("| triggered handler calls, first close to last done (calls/s) | {trigger_rate:.0} |");
    println!();
    println!("| close-to-subscriber latency | events | p50 (ms) | p99 (ms) |\n|---|---|---|---|");
    let bursts = format!("during the {files}-file bursts");
    let trigger_bursts = format!("close to trigger done, {files}-file burst");
    for (name, lat) in [
        ("one file at a time", &mut idle),
        (bursts.as_str(), &mut burst),
        (
            "close to trigger done, one file at a time",
            &mut trigger_idle,
        ),
        (trigger_bursts.as_str(), &mut trigger_burst),
    ] {
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        println!(
            "| {name} | {} | {:.2} | {:.2} |",
            lat.len(),
            p(0.5).as_secs_f64() * 1e3,
            p(0.99).as_secs_f64() * 1e3
        );
    }
}

/// The trigger workloads: a bucket whose Puts run `mark.done` (an omap write), whose
/// `ObjectMetadata:Set` is published; returns triggered calls/s over a burst of `files`, and
/// close-to-done latencies during the burst and one file at a time.
fn triggers(
    fs: &TestFs,
    arrivals: &Arrivals,
    files: usize,
    paced: usize,
) -> (f64, Vec<Duration>, Vec<Duration>) {
    fs.bucket("triggered");
    fs.put_class(
        "mark",
        "function done(i, o) objclass.map_set_val('done', '1') end objclass.register(done)",
    );
    let toml = "[[notification]]\nid = \"mark\"\ncall = \"mark.done\"\nevents = [\"ObjectCreated:Put\"]\n\
                [[notification]]\nid = \"done\"\ntopic = \"t\"\nevents = [\"ObjectMetadata:Set\"]\n";
    fs::write(fs.path(".lunafs/notifications/triggered.toml"), toml).unwrap();
    let (closed, _) = create(&fs.path("triggered"), "burst", files);
    let got = arrivals.collect(&closed, WAIT);
    let first = closed.values().min().unwrap();
    let last = got.iter().map(|(_, a)| *a).max().unwrap();
    let calls = rate(files, last.duration_since(*first).as_secs_f64());
    let burst = got.iter().map(|(c, a)| a.duration_since(*c)).collect();
    let mut idle = Vec::new();
    for i in 0..paced {
        let (closed, _) = create(&fs.path("triggered"), &format!("paced{i}"), 1);
        idle.extend(
            arrivals
                .collect(&closed, WAIT)
                .iter()
                .map(|(c, a)| a.duration_since(*c)),
        );
    }
    (calls, burst, idle)
}

/// Creates `n` files of 4 KiB under `bucket/dir/d0..d9`; returns each file's key and the time
/// its close returned, and the seconds the whole loop took.
fn create(bucket: &Path, dir: &str, n: usize) -> (HashMap<String, Instant>, f64) {
    let data = vec![0x5au8; 4096];
    for d in 0..10.min(n) {
        fs::create_dir_all(bucket.join(format!("{dir}/d{d}"))).unwrap();
    }
    let mut closed = HashMap::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let key = format!("{dir}/d{}/f{i}", i % 10);
        let mut f = fs::File::create(bucket.join(&key)).unwrap();
        f.write_all(&data).unwrap();
        drop(f);
        closed.insert(key, Instant::now());
    }
    (closed, start.elapsed().as_secs_f64())
}

fn rate(n: usize, secs: f64) -> f64 {
    n as f64 / secs
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Writes topic `name` (retries after 50 ms, doubling).
fn topic(fs: &TestFs, name: &str, url: &str, subject: &str, extra: &str) {
    let toml =
        format!("url = \"{url}\"\nsubject = \"{subject}\"\nretry_sleep_duration = 0.05\n{extra}");
    fs::write(fs.path(&format!(".lunafs/topics/{name}.toml")), toml).unwrap();
}

fn notify_all(fs: &TestFs, bucket: &str, topic: &str) {
    let toml = format!(
        "[[notification]]\nid = \"all\"\ntopic = \"{topic}\"\nevents = [\"ObjectCreated:*\"]\n"
    );
    fs::write(
        fs.path(&format!(".lunafs/notifications/{bucket}.toml")),
        toml,
    )
    .unwrap();
}

/// The subscriber: a thread with its own runtime sends (object key, arrival time) of every
/// message, read from the record in the payload.
struct Arrivals {
    rx: mpsc::Receiver<(String, Instant)>,
}

impl Arrivals {
    fn subscribe(url: &str, subject: &str) -> Arrivals {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let (url, subject) = (url.to_string(), subject.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = async_nats::ConnectOptions::new()
                    .name("bench-subscriber")
                    .connect(url)
                    .await
                    .expect("connect subscriber");
                let mut sub = client.subscribe(subject).await.unwrap();
                client.flush().await.unwrap();
                ready_tx.send(()).unwrap();
                while let Some(m) = sub.next().await {
                    let at = Instant::now();
                    let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                    let key = v["Records"][0]["s3"]["object"]["key"].as_str().unwrap();
                    if tx.send((key.to_string(), at)).is_err() {
                        break;
                    }
                }
            });
        });
        ready.recv().expect("subscriber started");
        Arrivals { rx }
    }

    /// Waits for a message for every key of `closed`; returns (close, arrival) per key.
    /// Panics on a missing message (nothing may be lost) and ignores duplicates.
    fn collect(
        &self,
        closed: &HashMap<String, Instant>,
        limit: Duration,
    ) -> Vec<(Instant, Instant)> {
        let deadline = Instant::now() + limit;
        let mut got: HashMap<&str, (Instant, Instant)> = HashMap::with_capacity(closed.len());
        while got.len() < closed.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let (key, at) = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{} of {} events arrived", got.len(), closed.len()));
            if let Some((k, c)) = closed.get_key_value(key.as_str()) {
                got.entry(k.as_str()).or_insert((*c, at));
            }
        }
        got.into_values().collect()
    }
}
