//! Bucket notifications end to end: a real mount, a real nats-server on loopback (JetStream
//! and monitoring on), a real subscriber. Settings are written as files under /.lunafs.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::nats::{all_events, Nats, Sub};
use common::{sh, TestFs};

const WAIT: Duration = Duration::from_secs(30);

fn md5sum(path: &std::path::Path) -> String {
    sh(&format!("md5sum '{}'", path.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Writes a whole file and reports the error of its close (where /.lunafs files are
/// validated), which `fs::write` would ignore.
fn write_closed(path: std::path::PathBuf, data: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut f = fs::File::create(path)?;
    f.write_all(data.as_bytes())?;
    // SAFETY: the descriptor was just taken from the File and is closed once.
    match unsafe { libc::close(f.into_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[test]
fn cp_rm_and_rsync_give_s3_records() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "ev.>");
    let fs = TestFs::mount();
    let b = fs.bucket("photos");
    fs.put_topic("t1", &nats, "ev.photos", "opaque_data = \"od\"");
    fs.put_notifications("photos", &all_events("all", "t1"));

    let src = fs.path("../src.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&src, &data).unwrap();
    fs::create_dir(b.join("d")).unwrap();
    assert!(Command::new("cp")
        .arg(&src)
        .arg(b.join("d/a.bin"))
        .status()
        .unwrap()
        .success());
    xattr::set(b.join("d/a.bin"), "user.color", b"red").unwrap();

    let got = sub.take(1, WAIT);
    assert_eq!(got.len(), 1, "one Put for a cp");
    let r = got[0].record();
    assert_eq!(r["eventName"], "ObjectCreated:Put");
    assert_eq!(r["eventSource"], "lunafs:s3");
    assert_eq!(r["s3"]["bucket"]["name"], "photos");
    assert_eq!(r["s3"]["object"]["key"], "d/a.bin");
    assert_eq!(r["s3"]["object"]["size"], 300_000);
    assert_eq!(r["s3"]["object"]["eTag"], md5sum(&src));
    assert_eq!(r["s3"]["configurationId"], "all");
    assert_eq!(r["opaqueData"], "od");
    assert_eq!(r["userIdentity"]["principalId"], "0");
    assert!(r["eventTime"].as_str().unwrap().ends_with('Z'));

    // The setfattr above: ObjectMetadata:Set with the omap it left.
    let got = sub.take(1, WAIT);
    let r = got[0].record();
    assert_eq!(r["eventName"], "ObjectMetadata:Set");
    assert_eq!(r["s3"]["object"]["eTag"], md5sum(&src));
    assert_eq!(
        r["s3"]["object"]["metadata"],
        serde_json::json!([{"key": "color", "val": "red"}])
    );

    // A rewrite (not sequential from 0: the eTag is computed from the content) carries the
    // omap as metadata.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(b.join("d/a.bin"))
        .unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"XYZ", 1000).unwrap();
    drop(f);
    let got = sub.take(1, WAIT);
    let r = got[0].record();
    assert_eq!(r["s3"]["object"]["eTag"], md5sum(&b.join("d/a.bin")));
    assert_eq!(
        r["s3"]["object"]["metadata"],
        serde_json::json!([{"key": "color", "val": "red"}])
    );

    fs::remove_file(b.join("d/a.bin")).unwrap();
    let got = sub.take(1, WAIT);
    assert_eq!(got[0].record()["eventName"], "ObjectRemoved:Delete");
    assert_eq!(got[0].record()["s3"]["object"]["key"], "d/a.bin");

    // rsync writes a temp file and renames it: the final name gets an event.
    let out = Command::new("rsync")
        .arg(&src)
        .arg(b.join("d/r.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = sub.take(3, WAIT);
    let names: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            let r = m.record();
            (
                r["eventName"].as_str().unwrap().to_string(),
                r["s3"]["object"]["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        names.contains(&("ObjectCreated:Copy".into(), "d/r.bin".into())),
        "{names:?}"
    );
    let copy = got
        .iter()
        .find(|m| m.record()["s3"]["object"]["key"] == "d/r.bin")
        .unwrap();
    assert_eq!(copy.record()["s3"]["object"]["eTag"], md5sum(&src));
    // Sequencers increase per object.
    let seqs: Vec<String> = got
        .iter()
        .map(|m| {
            m.record()["s3"]["object"]["sequencer"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = seqs.clone();
    sorted.sort();
    assert_eq!(seqs, sorted);
    let s = fs.stats();
    assert!(s["delivery"]["published"].as_u64().unwrap() >= 6, "{s}");
}

#[test]
fn filters_event_types_and_scripts_hold() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), ">");
    let fs = TestFs::mount();
    let b = fs.bucket("b");
    fs.put_topic("t", &nats, "plain", "");
    fs.put_notifications(
        "b",
        r#"
[[notification]]
id = "jpg-created"
topic = "t"
events = ["ObjectCreated:*"]
prefix = "img/"
suffix = ".jpg"

[[notification]]
id = "red-deleted"
topic = "t"
events = ["ObjectRemoved:Delete"]
omap = { color = "red" }
"#,
    );
    fs::create_dir(b.join("img")).unwrap();
    fs::write(b.join("img/a.jpg"), b"1").unwrap(); // matches jpg-created
    fs::write(b.join("img/a.png"), b"2").unwrap(); // suffix does not match
    fs::write(b.join("other.jpg"), b"3").unwrap(); // prefix does not match
    fs::write(b.join("red.txt"), b"4").unwrap();
    xattr::set(b.join("red.txt"), "user.color", b"red").unwrap();
    fs::write(b.join("blue.txt"), b"5").unwrap();
    xattr::set(b.join("blue.txt"), "user.color", b"blue").unwrap();
    fs::remove_file(b.join("blue.txt")).unwrap(); // omap does not match
    fs::remove_file(b.join("red.txt")).unwrap(); // matches red-deleted
    let got = sub.take(3, Duration::from_secs(5));
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            let r = m.record();
            (
                r["s3"]["configurationId"].as_str().unwrap().to_string(),
                r["s3"]["object"]["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("jpg-created".to_string(), "img/a.jpg".to_string()),
            ("red-deleted".to_string(), "red.txt".to_string()),
        ]
    );

    // A script rewrites subject and payload, routes by key prefix and can filter.
    fs::write(
        fs.path(".lunafs/notify/b.lua"),
        r#"
local key = event.s3.object.key
if key:sub(1, 5) == "skip/" then return end
local subject = "routed." .. key:match("^([^/]+)/")
nats.publish(subject, event.eventName .. " " .. key .. " " .. #event_json, {["X-Bucket"] = event.s3.bucket.name})
"#,
    )
    .unwrap();
    fs::create_dir(b.join("skip")).unwrap();
    fs::write(b.join("skip/x.jpg"), b"1").unwrap();
    fs::write(b.join("img/b.jpg"), b"1").unwrap();
    let got = sub.take(1, WAIT);
    assert_eq!(got[0].subject, "routed.img");
    let text = String::from_utf8(got[0].payload.clone()).unwrap();
    assert!(text.starts_with("ObjectCreated:Put img/b.jpg "), "{text}");
    assert!(got[0]
        .headers
        .contains(&("X-Bucket".to_string(), "b".to_string())));
    assert!(
        sub.take(1, Duration::from_millis(500)).is_empty(),
        "skip/ was filtered"
    );
}

#[test]
fn events_wait_for_nats_and_jetstream_deduplicates_redelivery() {
    let mut nats = Nats::stopped();
    let fs = TestFs::mount();
    let b = fs.bucket("q");
    fs.put_topic("js", &nats, "jsq.events", "jetstream = true");
    fs.put_notifications("q", &all_events("n", "js"));
    for i in 0..1000 {
        fs::write(b.join(format!("f{i:04}")), format!("{i}")).unwrap();
    }
    let mut fs = fs;
    // Copy the store while everything is still queued (a clean unmount first).
    fs.unmount();
    let copy = fs.copy_store();
    fs.remount();

    nats.run();
    let sub = Sub::new(&nats.url(), "unused");
    sub.create_stream("EVENTS", &["jsq.>"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sub.stream_messages("EVENTS") < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 1000 arrived",
            sub.stream_messages("EVENTS")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let first = sub.stream_messages("EVENTS");
    assert_eq!(first, 1000, "one message per file");
    fs.unmount();
    // The copy holds the same 1000 queued events: delivering them again is a redelivery,
    // which the stream deduplicates by Nats-Msg-Id.
    fs.restore_store(copy);
    fs.remount();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = fs.stats();
        if s["delivery"]["delivered"].as_u64() >= Some(1000) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "redelivery: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sub.stream_messages("EVENTS"), first);
}

#[test]
fn events_queued_at_kill_9_are_delivered_after_restart() {
    let mut nats = Nats::stopped();
    let mut fs = TestFs::mount();
    let b = fs.bucket("k");
    fs.put_topic("t", &nats, "kill.ev", "");
    fs.put_notifications("k", &all_events("n", "t"));
    for i in 0..200 {
        fs::write(b.join(format!("f{i}")), b"x").unwrap();
    }
    fs.kill9();
    nats.run();
    let mut sub = Sub::new(&nats.url(), "kill.ev");
    fs.restart();
    // Core NATS delivery is at least once (a publish whose flush timed out is sent again),
    // so count distinct keys.
    let mut keys = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while keys.len() < 200 && std::time::Instant::now() < deadline {
        for m in sub.take(200 - keys.len(), Duration::from_secs(5)) {
            keys.insert(
                m.record()["s3"]["object"]["key"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert_eq!(keys.len(), 200);
}

#[test]
fn ten_thousand_events_from_concurrent_writers_share_one_connection() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "many");
    let fs = TestFs::mount();
    let b = fs.bucket("m");
    fs.put_topic("t", &nats, "many", "");
    fs.put_notifications("m", &all_events("n", "t"));
    // Ten writers at once: their commits land out of sequence order, and the dispatcher,
    // which reads the queue from where it left off, must still find every entry.
    std::thread::scope(|s| {
        for d in 0..10 {
            let b = &b;
            s.spawn(move || {
                fs::create_dir(b.join(format!("d{d}"))).unwrap();
                for i in 0..1000 {
                    fs::write(b.join(format!("d{d}/f{i}")), b"x").unwrap();
                }
            });
        }
    });
    // Other tests of this process fork while files here are open for writing; their
    // children's close of the inherited descriptors must not count as the writers' close.
    let mut got = sub.take(10_000, Duration::from_secs(120));
    got.extend(sub.take(1, Duration::from_secs(1)));
    let mut keys = std::collections::BTreeSet::new();
    for m in &got {
        let r = m.record();
        assert_eq!(r["s3"]["object"]["size"], 1, "{r}");
        assert_eq!(
            r["s3"]["object"]["eTag"],
            "9dd4e461268c8034f5c8564e155c67a6"
        );
        keys.insert(r["s3"]["object"]["key"].as_str().unwrap().to_string());
    }
    assert_eq!(got.len(), 10_000, "{}", fs.stats());
    assert_eq!(keys.len(), 10_000, "one event per file");
    let names = nats.connection_names();
    assert_eq!(
        names.iter().filter(|n| *n == "lunafs").count(),
        1,
        "connections: {names:?}"
    );
}

#[test]
fn global_table_survives_remount_and_background_script_runs() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "bg");
    let mut fs = TestFs::with_options("allow_other,background_interval=0.2");
    let b = fs.bucket("g");
    fs.put_topic("t", &nats, "unused", "");
    fs.put_notifications("g", &all_events("n", "t"));
    fs::write(
        fs.path(".lunafs/notify/g.lua"),
        "RGW.increment('events')\nRGW['last'] = event.s3.object.key\n",
    )
    .unwrap();
    for i in 0..5 {
        fs::write(b.join(format!("f{i}")), b"x").unwrap();
    }
    let read_global = |fs: &TestFs| -> serde_json::Value {
        serde_json::from_slice(&fs::read(fs.path(".lunafs/global")).unwrap()).unwrap()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while read_global(&fs)["events"] != 5 {
        assert!(std::time::Instant::now() < deadline, "{}", read_global(&fs));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read_global(&fs)["last"], "f4");
    fs.remount();
    assert_eq!(read_global(&fs)["events"], 5);

    fs::write(
        fs.path(".lunafs/background.lua"),
        "local n = RGW.increment('ticks')\nnats.publish('bg', 'tick ' .. n .. ' ' .. RGW['events'], nil, 't')\n",
    )
    .unwrap();
    let got = sub.take(3, WAIT);
    assert_eq!(got.len(), 3);
    assert!(String::from_utf8_lossy(&got[2].payload).ends_with(" 5"));
    assert!(read_global(&fs)["ticks"].as_i64().unwrap() >= 3);
}

#[test]
fn a_failing_script_is_counted_logged_and_blocks_nothing_else() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "ok");
    let fs = TestFs::mount();
    let bad = fs.bucket("bad");
    let good = fs.bucket("good");
    fs.put_topic("t", &nats, "ok", "max_retries = 2");
    fs.put_notifications("bad", &all_events("n", "t"));
    fs.put_notifications("good", &all_events("n", "t"));
    fs::write(
        fs.path(".lunafs/notify/bad.lua"),
        "error('broken on purpose')",
    )
    .unwrap();
    // A slow script, bounded by the Lua limits, for the other bucket... is not needed here:
    // the dispatcher runs apart from FUSE, so writes go on while scripts fail.
    for i in 0..20 {
        fs::write(bad.join(format!("f{i}")), b"x").unwrap();
        fs::write(good.join(format!("f{i}")), b"x").unwrap();
    }
    let got = sub.take(20, WAIT);
    assert_eq!(got.len(), 20);
    assert!(got
        .iter()
        .all(|m| m.record()["s3"]["bucket"]["name"] == "good"));
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = fs.stats();
        if s["delivery"]["dropped"].as_u64() == Some(20) {
            assert!(
                s["delivery"]["script_errors"].as_u64().unwrap() >= 60,
                "{s}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fs.log().contains("broken on purpose"));

    // Settings are validated when written.
    let e = write_closed(fs.path(".lunafs/notify/bad.lua"), "this is not lua").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = write_closed(
        fs.path(".lunafs/notifications/good.toml"),
        &all_events("x", "missing-topic"),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let e = fs::remove_file(fs.path(".lunafs/topics/t.toml")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
}

#[test]
fn cli_manages_settings_and_the_shipped_routing_script_routes() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "cli.>");
    let fs = TestFs::mount();
    let b = fs.bucket("site");
    let lunafs = |args: &[&str]| {
        let out = Command::new(common::LUNAFS)
            .args(args)
            .env("LUNAFS_MOUNT", &fs.mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "lunafs {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let url = nats.url();
    lunafs(&["topic", "put", "t", "--url", &url, "--subject", "cli.ev"]);
    assert_eq!(lunafs(&["topic", "ls"]), "t\n");
    lunafs(&[
        "notification",
        "put",
        "site",
        "created",
        "--topic",
        "t",
        "--event",
        "ObjectCreated:*",
    ]);
    lunafs(&[
        "notification",
        "put",
        "site",
        "gone",
        "--topic",
        "t",
        "--event",
        "ObjectRemoved:*",
    ]);
    assert!(lunafs(&["notification", "get", "site"]).contains("id = \"gone\""));
    lunafs(&["notification", "rm", "site", "gone"]);
    assert!(!lunafs(&["notification", "get", "site"]).contains("gone"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/lua/notify/route_by_prefix.lua"
    );
    lunafs(&["notification", "script", "site", script]);

    fs::create_dir(b.join("images")).unwrap();
    fs::write(b.join("images/cat.jpg"), b"meow").unwrap();
    fs::write(b.join(".tmp-file"), b"x").unwrap(); // filtered by the script
    fs::write(b.join("readme"), b"hi").unwrap();
    fs::remove_file(b.join("readme")).unwrap(); // no notification wants deletes now
    let got = sub.take(3, Duration::from_secs(5));
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["cli.ev.images", "cli.ev.other"]);
    let first = got[0].json();
    assert_eq!(first["key"], "images/cat.jpg");
    assert_eq!(first["etag"], "4a4be40c96ac6314e91d93f38043a634"); // md5("meow")
    assert_eq!(first["seq"], 1);
    assert_eq!(got[1].json()["seq"], 2);

    // A topic in use cannot go; the CLI says why.
    let out = Command::new(common::LUNAFS)
        .args(["topic", "rm", "t"])
        .env("LUNAFS_MOUNT", &fs.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("topic t"),
        "{out:?}"
    );
}

#[test]
fn handler_calls_and_directory_renames_give_events() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "h.>");
    let fs = TestFs::mount();
    let b = fs.bucket("hb");
    fs::create_dir(b.join("dir")).unwrap();
    fs::write(b.join("dir/obj"), b"before").unwrap();
    fs.put_class(
        "stamp",
        "function f(i, o) objclass.write_full('after the call') \
         objclass.map_set_val('state', 'stamped') end objclass.register(f)",
    );
    fs.put_topic("t", &nats, "h.ev", "");
    fs.put_notifications("hb", &all_events("n", "t"));

    // A handler that changes the data: one Put, with the new content's MD5 and the omap the
    // call left.
    xattr::set(b.join("dir/obj"), "user.cls.stamp.f", b"").unwrap();
    let got = sub.take(1, WAIT);
    let r = got[0].record();
    assert_eq!(r["eventName"], "ObjectCreated:Put");
    assert_eq!(r["s3"]["object"]["key"], "dir/obj");
    assert_eq!(r["s3"]["object"]["size"], 14);
    assert_eq!(r["s3"]["object"]["eTag"], md5sum(&b.join("dir/obj")));
    assert_eq!(
        r["s3"]["object"]["metadata"],
        serde_json::json!([{"key": "state", "val": "stamped"}])
    );

    // Renaming a directory moves every object under it.
    fs::rename(b.join("dir"), b.join("moved")).unwrap();
    let got = sub.take(2, WAIT);
    let seen: Vec<(String, String, String)> = got
        .iter()
        .map(|m| {
            let r = m.record();
            (
                r["eventName"].as_str().unwrap().to_string(),
                r["s3"]["object"]["key"].as_str().unwrap().to_string(),
                r["s3"]["object"]["eTag"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let etag = md5sum(&b.join("moved/obj"));
    assert_eq!(
        seen,
        vec![
            ("ObjectCreated:Copy".into(), "moved/obj".into(), etag),
            (
                "ObjectRemoved:Delete".into(),
                "dir/obj".into(),
                String::new()
            ),
        ]
    );
}

#[test]
fn handler_calls_filter_on_their_own_omap_remove_with_a_delete_and_reset_a_writers_md5() {
    use std::io::Write;
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "hc.>");
    let fs = TestFs::mount();
    let b = fs.bucket("hc");
    fs.put_class(
        "c",
        "function tag(i, o) objclass.write_full('tagged') \
           objclass.map_set_val('state', 'ready') end objclass.register(tag) \
         function patch(i, o) objclass.write(0, 1, 'P') end objclass.register(patch) \
         function rm(i, o) objclass.remove() end objclass.register(rm)",
    );
    fs.put_topic("t", &nats, "hc.ev", "");
    fs.put_notifications(
        "hc",
        "[[notification]]\nid = \"ready\"\ntopic = \"t\"\nomap = { state = \"ready\" }\n",
    );
    // The filter sees the omap the call leaves, not the one stored before it.
    fs::write(b.join("a"), b"old").unwrap();
    xattr::set(b.join("a"), "user.cls.c.tag", b"").unwrap();
    let got = sub.take(1, WAIT);
    assert_eq!(got.len(), 1, "the call's Put passes the omap filter");
    assert_eq!(got[0].record()["eventName"], "ObjectCreated:Put");
    assert_eq!(
        got[0].record()["s3"]["object"]["eTag"],
        md5sum(&b.join("a"))
    );

    // A call that changes a file open for writing: the writer's close computes the eTag
    // from the content, not from the bytes it wrote itself.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(b.join("a"))
        .unwrap();
    f.write_all(b"!").unwrap();
    f.sync_all().unwrap(); // the kernel's cached page reaches lunafs before the call
    assert_eq!(fs.call("hc/a", "c.patch", b"").result, 0);
    drop(f);
    let got = sub.take(3, Duration::from_secs(3));
    let last = got
        .last()
        .expect("events for the call and the close")
        .record();
    assert_eq!(last["s3"]["object"]["eTag"], md5sum(&b.join("a")));
    assert_eq!(fs::read(b.join("a")).unwrap(), b"Pagged!");

    // A handler's remove() of the last name is an ObjectRemoved:Delete.
    fs.put_notifications("hc", &all_events("all", "t"));
    assert_eq!(fs.call("hc/a", "c.rm", b"").result, 0);
    let got = sub.take(1, WAIT);
    assert_eq!(got[0].record()["eventName"], "ObjectRemoved:Delete");
    assert_eq!(got[0].record()["s3"]["object"]["key"], "a");
}

#[test]
fn events_older_than_time_to_live_are_dropped_and_counted() {
    let nats = Nats::stopped(); // never started: nothing can be delivered
    let fs = TestFs::mount();
    let b = fs.bucket("ttl");
    fs.put_topic("t", &nats, "ttl.ev", "time_to_live = 1");
    fs.put_notifications("ttl", &all_events("n", "t"));
    fs::write(b.join("f"), b"x").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = fs.stats();
        if s["delivery"]["dropped"] == 1 {
            assert_eq!(s["delivery"]["delivered"], 0, "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fs.log().contains("older than time_to_live"), "{}", fs.log());
}

#[test]
fn a_child_closing_an_inherited_descriptor_does_not_make_an_early_put() {
    use std::io::Write;
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "fork.ev");
    let fs = TestFs::mount();
    let b = fs.bucket("fork");
    fs.put_topic("t", &nats, "fork.ev", "");
    fs.put_notifications("fork", &all_events("n", "t"));
    // A child forked while the file is open closes its copy at exec: a close(2) on the
    // file, before anything was written.
    let mut f = fs::File::create(b.join("f")).unwrap();
    assert!(Command::new("true").status().unwrap().success());
    f.write_all(b"hello").unwrap();
    // Closed on another thread of the same process: still the writer's close.
    std::thread::spawn(move || drop(f)).join().unwrap();
    let got = sub.take(2, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "one Put");
    assert_eq!(got[0].record()["s3"]["object"]["size"], 5);
}

#[test]
fn a_topic_url_that_does_not_parse_is_refused_and_delivery_goes_on() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "ok.>");
    let fs = TestFs::mount();
    fs.bucket("b");
    for bad in [
        "nats://h:99999",
        "nats://h:0",
        "nats://:4222",
        "http://h:4222",
    ] {
        let e = write_closed(
            fs.path(".lunafs/topics/bad.toml"),
            &format!("url = \"{bad}\"\nsubject = \"s\"\n"),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad}");
    }
    assert!(
        !fs.path(".lunafs/topics/bad.toml").exists(),
        "nothing stored"
    );
    let out = Command::new(common::LUNAFS)
        .args([
            "topic",
            "put",
            "bad",
            "--url",
            "nats://h:99999",
            "--subject",
            "s",
            "-m",
        ])
        .arg(&fs.mnt)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("url") && err.contains("99999"), "{err}");
    // The dispatcher never saw them and delivers as usual.
    fs.put_topic("good", &nats, "ok.b", "");
    fs.put_notifications("b", &all_events("n", "good"));
    fs::write(fs.path("b/f"), b"x").unwrap();
    assert_eq!(sub.take(1, WAIT).len(), 1);
}

/// The key and size of each message, in arrival order.
fn keys_and_sizes(got: &[common::nats::Received]) -> Vec<(String, u64)> {
    got.iter()
        .map(|m| {
            let o = &m.record()["s3"]["object"];
            (
                o["key"].as_str().unwrap().to_string(),
                o["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn shell_redirects_dd_dup_and_dup2_give_exactly_one_put_each() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "one.>");
    let fs = TestFs::mount();
    let b = fs.bucket("s");
    fs.put_topic("t", &nats, "one.s", "");
    fs.put_notifications("s", &all_events("n", "t"));
    let dir = b.display();
    let py = |body: &str| format!("python3 -c \"import os\n{body}\"");
    let forms = [
        format!("bash -c 'echo x > {dir}/echo'"),
        format!("bash -c 'printf yy > {dir}/printf'"),
        format!("bash -c 'head -c 5 /dev/zero > {dir}/cmd'"),
        format!("dd if=/dev/zero of={dir}/dd bs=1k count=3 status=none"),
        py(&format!(
            "fd = os.open('{dir}/dup', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\nd = os.dup(fd)\nos.write(d, b'abc')\nos.close(fd)\nos.write(d, b'def')\nos.close(d)"
        )),
        py(&format!(
            "fd = os.open('{dir}/dup2', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\nos.dup2(fd, 9)\nos.close(fd)\nos.write(9, b'ab')\nos.close(9)"
        )),
    ];
    for form in &forms {
        sh(form);
    }
    let want = [
        ("echo", 2),
        ("printf", 2),
        ("cmd", 5),
        ("dd", 3072),
        ("dup", 6),
        ("dup2", 2),
    ];
    let got = sub.take(want.len(), WAIT);
    let mut got = keys_and_sizes(&got);
    // Nothing more comes: no early Put of size 0 before any of them.
    got.extend(keys_and_sizes(&sub.take(1, Duration::from_secs(1))));
    got.sort();
    let mut want: Vec<(String, u64)> = want.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_kill_right_after_a_shell_close_keeps_its_one_put() {
    let mut nats = Nats::stopped();
    let mut fs = TestFs::mount();
    let b = fs.bucket("k");
    fs.put_topic("t", &nats, "kill1.ev", "");
    fs.put_notifications("k", &all_events("n", "t"));
    sh(&format!("bash -c 'echo hello > {}/f'", b.display()));
    fs.kill9();
    nats.run();
    let mut sub = Sub::new(&nats.url(), "kill1.ev");
    fs.restart();
    let got = sub.take(1, WAIT);
    assert_eq!(keys_and_sizes(&got), [("f".to_string(), 6)]);
    assert!(sub.take(1, Duration::from_secs(1)).is_empty(), "one Put");
}

#[test]
fn a_topic_whose_server_is_down_shows_in_stats_and_warns() {
    let nats = Nats::stopped();
    let fs = TestFs::mount();
    let b = fs.bucket("d");
    fs.put_topic("down", &nats, "down.ev", "");
    fs.put_notifications("d", &all_events("n", "down"));
    fs::write(b.join("f"), b"x").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = fs.stats();
        let t = &s["delivery"]["topics"]["down"];
        if t["state"] == "disconnected" && t["last_error"].is_string() {
            assert!(s["events_pending"].as_u64().unwrap() >= 1, "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = fs.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("down") && l.contains("not connected")),
        "{log}"
    );
}

#[test]
fn a_jetstream_topic_needs_a_stream_for_its_subject() {
    let mut nats = Nats::start();
    let sub = Sub::new(&nats.url(), "js-check");
    sub.create_stream("CHECKED", &["checked.>"]);
    let fs = TestFs::mount();
    let text = |subject: &str| {
        format!(
            "url = \"{}\"\nsubject = \"{subject}\"\njetstream = true\n",
            nats.url()
        )
    };
    let e = write_closed(fs.path(".lunafs/topics/none.toml"), &text("nostream.x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(fs.log().contains("no JetStream stream"), "{}", fs.log());
    write_closed(fs.path(".lunafs/topics/ok.toml"), &text("checked.a")).unwrap();
    // A server that does not answer cannot say: the topic is stored, with a warning.
    let url = nats.url();
    drop(sub);
    nats.stop();
    let unchecked = format!("url = \"{url}\"\nsubject = \"any\"\njetstream = true\n");
    write_closed(fs.path(".lunafs/topics/later.toml"), &unchecked).unwrap();
    assert!(fs.log().contains("stored unchecked"), "{}", fs.log());
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    }));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[test]
fn cp_of_a_jpeg_leaves_a_thumbnail_in_the_omap_with_no_client_call() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "thumbs.>");
    let fs = TestFs::mount();
    let b = fs.bucket("photos");
    fs.put_shipped_class("thumb");
    fs.put_topic("t", &nats, "thumbs.ev", "");
    fs.put_notifications("photos", &all_events("all", "t"));
    // The trigger as a user adds it.
    let out = Command::new(common::LUNAFS)
        .args([
            "notification",
            "put",
            "photos",
            "thumbs",
            "--call",
            "thumb.make",
        ])
        .args([
            "--input",
            "200x150",
            "--event",
            "ObjectCreated:*",
            "--suffix",
            ".jpg",
            "-m",
        ])
        .arg(&fs.mnt)
        .output()
        .unwrap();
    common::succeeded(&out);
    let src = fs.path("../cat.jpg");
    let original = jpeg(800, 600);
    fs::write(&src, &original).unwrap();
    sh(&format!("cp {} {}/", src.display(), b.display()));
    let cat = b.join("cat.jpg");
    let deadline = std::time::Instant::now() + WAIT;
    let record = loop {
        if let Some(v) = xattr::get(&cat, "user.thumb.200x150").unwrap() {
            break String::from_utf8(v).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{}", fs.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    // "OFFSET LENGTH FORMAT": the thumbnail sits after the original's bytes.
    let parts: Vec<&str> = record.split(' ').collect();
    let (offset, len): (usize, usize) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
    assert_eq!(offset, original.len());
    let object = fs::read(&cat).unwrap();
    assert_eq!(
        object.len(),
        offset + len,
        "the kernel sees the grown object"
    );
    let thumb = image::load_from_memory(&object[offset..]).unwrap();
    assert!(thumb.width() <= 200 && thumb.height() <= 150);
    // The client's Put and the trigger's own Put reach the topic; the trigger ran once.
    let got = sub.take(2, WAIT);
    let names: Vec<String> = got
        .iter()
        .map(|m| m.record()["eventName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["ObjectCreated:Put", "ObjectCreated:Put"]);
    assert!(sub.take(1, Duration::from_secs(1)).is_empty(), "no loop");
    let s = fs.stats();
    assert_eq!(s["delivery"]["triggers_run"], 1, "{s}");
}

#[test]
fn a_failing_trigger_is_retried_counted_and_dropped_after_max_retries() {
    let fs = TestFs::mount();
    let b = fs.bucket("f");
    fs.put_class(
        "broken",
        "function go(i, o) return -objclass.EIO end objclass.register(go)",
    );
    fs.put_notifications(
        "f",
        "[[notification]]\nid = \"x\"\ncall = \"broken.go\"\nmax_retries = 2\nretry_sleep_duration = 0.1\n",
    );
    fs::write(b.join("obj"), b"x").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = fs.stats();
        if s["delivery"]["dropped"] == 1 {
            assert_eq!(s["delivery"]["triggers_failed"], 3, "{s}");
            assert_eq!(s["delivery"]["triggers_run"], 0, "{s}");
            assert_eq!(s["events_pending"], 0, "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_publish_that_keeps_failing_is_dropped_after_max_retries_and_counted_once_gone() {
    let nats = Nats::start();
    let sub = Sub::new(&nats.url(), "gone.x");
    sub.create_stream("GONE", &["gone.>"]);
    let fs = TestFs::mount();
    let b = fs.bucket("g");
    fs.put_topic("t", &nats, "gone.x", "jetstream = true\nmax_retries = 1\n");
    fs.put_notifications("g", &all_events("n", "t"));
    // JetStream now refuses every publish to the subject: no stream stores it.
    sub.delete_stream("GONE");
    fs::write(b.join("obj"), b"x").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = fs.stats();
        if s["delivery"]["dropped"] == 1 {
            assert_eq!(s["events_pending"], 0, "counted once gone: {s}");
            assert_eq!(s["delivery"]["delivered"], 0, "{s}");
            let t = &s["delivery"]["topics"]["t"];
            assert_eq!(
                (&t["retried"], &t["dropped"]),
                (&1.into(), &1.into()),
                "{s}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_metadata_change_while_a_put_is_held_arrives_after_it() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "held.ev");
    let fs = TestFs::mount();
    let b = fs.bucket("held");
    fs.put_topic("t", &nats, "held.ev", "");
    fs.put_notifications("held", &all_events("n", "t"));
    // The close of the first descriptor records a held Put (the dup keeps the open alive);
    // the xattr change comes while it is held, the last close ends the hold.
    let path = b.join("f");
    sh(&format!(
        "python3 -c \"import os, time\nfd = os.open('{p}', os.O_WRONLY | os.O_CREAT)\nd = os.dup(fd)\nos.write(fd, b'abc')\nos.close(fd)\ntime.sleep(0.3)\nos.setxattr('{p}', 'user.k', b'v')\ntime.sleep(0.3)\nos.close(d)\"",
        p = path.display()
    ));
    let got = sub.take(2, WAIT);
    let names: Vec<String> = got
        .iter()
        .map(|m| m.record()["eventName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["ObjectCreated:Put", "ObjectMetadata:Set"]);
}

#[test]
fn a_backlog_of_failing_events_longer_than_a_round_does_not_hold_up_other_buckets() {
    let nats = Nats::start();
    let mut sub = Sub::new(&nats.url(), "hol.>");
    let fs = TestFs::mount();
    let bad = fs.bucket("bad");
    let good = fs.bucket("good");
    // Retried every 10 ms at first: among 9,000 events some retry is always due.
    fs::write(
        fs.path(".lunafs/topics/bad.toml"),
        format!(
            "url = \"{}\"\nsubject = \"hol.bad\"\nretry_sleep_duration = 0.01\n",
            nats.url()
        ),
    )
    .unwrap();
    fs.put_topic("good", &nats, "hol.good", "");
    fs.put_notifications("bad", &all_events("n", "bad"));
    fs.put_notifications("good", &all_events("n", "good"));
    // A failing script, fast on an event's first attempt and slow on its retries: the
    // dispatcher cannot keep up with the retries that come due.
    fs::write(
        fs.path(".lunafs/notify/bad.lua"),
        "local k = event.s3.object.key\n\
         if RGW[k] then local x = 0 for i = 1, 100000 do x = x + i end end\n\
         RGW[k] = true\n\
         error('failing')",
    )
    .unwrap();
    // More failing events than one dispatcher round reads (8,192), retried without end.
    for d in 0..10 {
        fs::create_dir(bad.join(format!("d{d}"))).unwrap();
    }
    for i in 0..9000 {
        fs::write(bad.join(format!("d{}/f{i}", i % 10)), b"x").unwrap();
    }
    for i in 0..5 {
        fs::write(good.join(format!("f{i}")), b"ok").unwrap();
    }
    let waited = std::time::Instant::now();
    let got = sub.take(5, WAIT);
    eprintln!("the good bucket's events came in {:?}", waited.elapsed());
    let mut keys: Vec<String> = keys_and_sizes(&got).into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, ["f0", "f1", "f2", "f3", "f4"], "{}", fs.stats());
    assert!(fs.stats()["events_pending"].as_u64().unwrap() >= 9000);
}

#[test]
fn a_trigger_skips_an_object_removed_or_renamed_before_it_runs() {
    let fs = TestFs::mount();
    let b = fs.bucket("t");
    fs.put_class(
        "mark",
        "function done(i, o) objclass.map_set_val('done', '1') end objclass.register(done)",
    );
    fs.put_notifications(
        "t",
        "[[notification]]\nid = \"m\"\ncall = \"mark.done\"\nevents = [\"ObjectCreated:*\"]\n",
    );
    // Each Put is held (the dup keeps the open alive) while the object is renamed or
    // removed, so its trigger can only run after that.
    let held_then = |name: &str, then: &str| {
        sh(&format!(
            "python3 -c \"import os\nfd = os.open('{p}', os.O_WRONLY | os.O_CREAT)\nd = os.dup(fd)\nos.write(fd, b'abc')\nos.close(fd)\n{then}\nos.close(d)\"",
            p = b.join(name).display()
        ));
    };
    held_then(
        "renamed",
        &format!("os.rename('{0}/renamed', '{0}/moved')", b.display()),
    );
    held_then("removed", &format!("os.unlink('{}/removed')", b.display()));
    fs::write(b.join("kept"), b"x").unwrap();
    // Runs: "kept", and "moved" for the rename's ObjectCreated:Copy. Skipped: the held
    // Puts of "renamed" (no longer there) and "removed".
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let s = fs.stats();
        if s["events_pending"] == 0 && s["delivery"]["triggers_run"] == 2 {
            assert_eq!(s["delivery"]["triggers_skipped"], 2, "{s}");
            assert_eq!(s["delivery"]["triggers_failed"], 0, "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in ["kept", "moved"] {
        assert_eq!(
            xattr::get(b.join(name), "user.done").unwrap().unwrap(),
            b"1"
        );
    }
    assert!(!b.join("renamed").exists() && !b.join("removed").exists());
}
