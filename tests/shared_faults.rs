//! Failures of a shared filesystem, with real parts: a mount killed with -9 while the other
//! works and delivers (leadership moves; JetStream gets every event once), and etcd going
//! silent under a mount (operations fail with EIO after backend_timeout instead of hanging,
//! then work again, nothing acknowledged lost), and one etcd member and one OSD of three
//! killed under load without the workload seeing an error.

mod common;

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{cluster, fsck_clean, PrivateEtcd, Threes};
use common::nats::{Nats, Sub};
use common::{errno_of, write_and_close, TestFs, LUNAFS};

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_mount_killed_during_load_leaves_the_other_working_and_every_event_lands_once() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "shared.events");
    sub.create_stream("SHARED", &["shared.>"]);
    let url = cluster().format("kill9");
    let mut a = TestFs::of_store(&url, "allow_other");
    wait_for("a to lead", Duration::from_secs(20), || {
        a.stats()["leader"] == true
    });
    let b = TestFs::of_store(&url, "allow_other");
    assert_eq!(b.stats()["leader"], false, "one leader at a time");
    fs::write(
        a.path(".lunafs/topics/js.toml"),
        format!(
            "url = \"{}\"\nsubject = \"shared.events\"\njetstream = true\n",
            nats.url()
        ),
    )
    .unwrap();
    fs::create_dir(a.path("q")).unwrap();
    fs::write(
        a.path(".lunafs/notifications/q.toml"),
        "[[notification]]\nid = \"n\"\ntopic = \"js\"\n",
    )
    .unwrap();
    // b learns of the settings from the store's watch.
    wait_for("b to see the notification", Duration::from_secs(10), || {
        b.path(".lunafs/notifications/q.toml").exists()
    });
    // Writers are processes of their own: a descriptor open in this multi-threaded test
    // process would be inherited by children other tests fork meanwhile, and a child's
    // close makes an early Put held on the writing mount, which the mount that takes
    // over knows nothing of (held Puts are per mount: see the README).
    let mut writer = write_files(&b.path("q"), "b", 300, 0.02);
    let mut a_writer = write_files(&a.path("q"), "a", 100, 0.0);
    assert!(a_writer.wait().unwrap().success());
    a.kill9();
    assert!(writer.wait().unwrap().success());
    wait_for("b to take over", Duration::from_secs(30), || {
        b.stats()["leader"] == true
    });
    wait_for("400 events", Duration::from_secs(60), || {
        sub.stream_messages("SHARED") >= 400
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = sub.take(1000, Duration::from_secs(1));
    let mut seen = std::collections::BTreeMap::new();
    for m in &got {
        let r = m.record();
        let key = (
            r["s3"]["object"]["key"].as_str().unwrap_or("").to_owned(),
            r["eventName"].as_str().unwrap_or("").to_owned(),
        );
        seen.entry(key).or_insert_with(Vec::new).push(
            r["responseElements"]["x-amz-request-id"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    let dups: Vec<_> = seen.iter().filter(|(_, ids)| ids.len() > 1).collect();
    eprintln!(
        "{} published, {} distinct events; duplicates: {dups:?}",
        got.len(),
        seen.len()
    );
    assert_eq!(sub.stream_messages("SHARED"), 400, "each event once");
    assert_eq!(fs::read_dir(b.path("q")).unwrap().count(), 400);
    // The killed mount comes back and sees everything; then both leave and fsck is clean.
    a.restart();
    assert_eq!(fs::read_dir(a.path("q")).unwrap().count(), 400);
    drop((a, b));
    fsck_clean(&url);
}

/// A python3 process writing `n` files `PREFIXnnn` into `dir`, pausing `pause` s after each.
fn write_files(dir: &std::path::Path, prefix: &str, n: u32, pause: f64) -> std::process::Child {
    let script = format!(
        "import os, time\nfor i in range({n}):\n    with open(os.path.join({dir:?}, '{prefix}%03d' % i), 'w') as f: f.write(str(i))\n    time.sleep({pause})\n",
        dir = dir.display().to_string()
    );
    Command::new("python3")
        .args(["-c", &script])
        .spawn()
        .unwrap()
}

#[test]
fn an_etcd_that_goes_silent_gives_eio_in_bounded_time_and_then_works_again() {
    let etcd = PrivateEtcd::start();
    let c = cluster();
    let url = format!("etcd://{}/{}", etcd.endpoint, c.fresh_name("silent"));
    let out = Command::new(LUNAFS)
        .args(["format", &url, "--data", &c.rados])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = TestFs::of_store(&url, "allow_other,backend_timeout=2");
    fs::create_dir(t.path("b")).unwrap();
    fs::write(t.path("b/kept"), b"acknowledged before the outage").unwrap();
    etcd.pause(true);
    // Runs in a thread so that a hang fails the test instead of blocking it forever.
    let target = t.path("b/during");
    let attempt = std::thread::spawn(move || errno_of(fs::write(target, b"x")));
    let start = Instant::now();
    while !attempt.is_finished() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the write hangs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(attempt.join().unwrap(), libc::EIO);
    etcd.pause(false);
    wait_for("etcd to answer again", Duration::from_secs(30), || {
        fs::write(t.path("b/after"), b"y").is_ok()
    });
    assert_eq!(
        fs::read(t.path("b/kept")).unwrap(),
        b"acknowledged before the outage"
    );
    assert_eq!(fs::read(t.path("b/after")).unwrap(), b"y");
    drop(t);
    fsck_clean(&url);
}

/// Writes, closes and reads back files under `dir` until `stop`: the number done, or the
/// first error, named.
fn load(dir: std::path::PathBuf, stop: Arc<AtomicBool>) -> Result<u32, String> {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let path = dir.join(format!("d{}", n % 8)).join(format!("f{n}"));
        let body: Vec<u8> = (0..64 * 1024 + n).map(|i| (i * 7 + n) as u8).collect();
        let step = |what: &str, r: std::io::Result<()>| {
            r.map_err(|e| format!("{what} {}: {e}", path.display()))
        };
        if n < 8 {
            step("mkdir", fs::create_dir(path.parent().unwrap()))?;
        }
        step("write", write_and_close(&path, &body))?;
        step("read", fs::read(&path).map(|b| assert_eq!(b, body)))?;
        step(
            "xattr",
            xattr::set(&path, "user.n", n.to_string().as_bytes()),
        )?;
        if n % 3 == 0 {
            step("unlink", fs::remove_file(&path))?;
        }
        n += 1;
    }
    Ok(n)
}

#[test]
fn one_etcd_member_and_one_osd_killed_under_load_go_unseen_by_the_workload() {
    let threes = Threes::start();
    let url = threes.cluster.format("threes");
    let t = TestFs::of_store(&url, "allow_other");
    fs::create_dir(t.path("b")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (dir, stop) = (t.path("b"), stop.clone());
        std::thread::spawn(move || load(dir, stop))
    };
    std::thread::sleep(Duration::from_secs(5));
    // The leader: its death loses commits in flight and makes an election.
    let leader = threes.etcd_leader();
    threes.kill(&format!("etcd-{leader}"));
    std::thread::sleep(Duration::from_secs(5));
    threes.kill("ceph-osd.0");
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let done = worker
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the workload saw {e}:\n{}", t.log()));
    let log = t.log();
    eprintln!(
        "{done} files written, read back and tagged; etcd {leader} and osd.0 killed; \
         {} commit(s) sent again, {} member change(s)",
        log.matches("answer was lost").count(),
        log.matches("etcd member changed state").count()
    );
    assert!(done > 50, "the workload went on: {done} files");
    // Everything kept is there, on a mount made after the deaths.
    drop(t);
    let t = TestFs::of_store(&url, "allow_other");
    for n in (0..done).filter(|n| n % 3 != 0) {
        let path = t.path(&format!("b/d{}/f{n}", n % 8));
        let body: Vec<u8> = (0..64 * 1024 + n).map(|i| (i * 7 + n) as u8).collect();
        assert_eq!(fs::read(&path).unwrap(), body, "{}", path.display());
        assert_eq!(
            xattr::get(&path, "user.n").unwrap().unwrap(),
            n.to_string().as_bytes()
        );
    }
    drop(t);
    fsck_clean(&url);
}
