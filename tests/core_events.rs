//! Event queueing without NATS and without a mount: core on a temp-dir store with notify's
//! routing installed, driven the way the FUSE adapter drives it (create, write, each
//! close's flush, the release), and the queue read back through core's event API. Covers
//! the rules of SPEC section 4: one Put per writing open with the final size and eTag,
//! held until the last close and kept across a kill, Copy at both keys of an exchange,
//! ObjectMetadata:Set, the acting uid, the pending gauge, and the trigger loop guard.

use std::sync::Arc;

use lunafs::core::call::{Code, Target};
use lunafs::core::dir::RenameMode;
use lunafs::core::events::{EventKind, Setting};
use lunafs::core::omap::SetMode;
use lunafs::core::{Core, Ctx, Name, ROOT};

fn n(s: &str) -> Name {
    Name::new(s.as_bytes()).unwrap()
}

fn ctx(uid: u32) -> Ctx {
    Ctx {
        uid,
        gid: 0,
        pid: 1,
    }
}

/// A store with bucket `b` watched by notification `all` (every event, to topic `t`).
struct Store {
    dir: tempfile::TempDir,
    core: Arc<Core>,
    bucket: u64,
}

fn open_core(dir: &std::path::Path) -> Arc<Core> {
    let core = Arc::new(Core::open(&dir.join("store"), (0, 0)).unwrap());
    lunafs::notify::install(&core).unwrap();
    core
}

fn watched(extra: &str) -> Store {
    let dir = tempfile::tempdir().unwrap();
    let core = open_core(dir.path());
    let topic = "url = \"nats://127.0.0.1:1\"\nsubject = \"s\"\n";
    core.setting_put(&Setting::Topic("t".into()), topic.as_bytes())
        .unwrap();
    let b = core.mkdir(ctx(0), ROOT, &n("b"), 0o755).unwrap();
    let notes = format!("[[notification]]\nid = \"all\"\ntopic = \"t\"\n{extra}");
    core.setting_put(&Setting::Notifications("b".into()), notes.as_bytes())
        .unwrap();
    Store {
        dir,
        core,
        bucket: b.ino,
    }
}

/// (kind, key, size, eTag, uid, held) of every pending event, in queue order.
fn pending(core: &Core) -> Vec<(EventKind, String, u64, String, u32, bool)> {
    core.pending_events(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|p| {
            let e = p.event.unwrap();
            let key = String::from_utf8(e.key).unwrap();
            (e.kind, key, e.size, e.etag, e.uid, p.held)
        })
        .collect()
}

fn md5(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    lunafs::digest::hex(&Md5::digest(data))
}

impl Store {
    /// A new file opened for writing, as create(2) makes it.
    fn create(&self, name: &str, uid: u32) -> u64 {
        let f = self
            .core
            .create(ctx(uid), self.bucket, &n(name), 0o644)
            .unwrap();
        self.core.open_file(f.ino).unwrap();
        self.core.begin_write(f.ino, uid, true).unwrap();
        f.ino
    }

    fn release(&self, ino: u64) {
        self.core.end_write(ino).unwrap();
        self.core.close_file(ino).unwrap();
    }
}

#[test]
fn a_shell_redirect_gives_one_put_with_the_final_size_and_etag() {
    let s = watched("");
    let c = &s.core;
    // `echo x > f`: open with O_TRUNC, dup2 to stdout, close the first descriptor, write,
    // close stdout at exit, then the release of the shared open.
    let f = s.create("f", 1000);
    c.flush_write(f, 1000).unwrap();
    let first = pending(c);
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].0, first[0].2, first[0].5),
        (EventKind::Put, 0, true)
    );
    c.write(f, 0, b"x\n").unwrap();
    c.flush_write(f, 1000).unwrap();
    let held = pending(c);
    assert_eq!(held.len(), 1, "the second close replaced the first Put");
    assert_eq!((held[0].2, held[0].5), (2, true));
    s.release(f);
    assert_eq!(
        pending(c),
        vec![(EventKind::Put, "f".into(), 2, md5(b"x\n"), 1000, false)]
    );
}

#[test]
fn closes_of_dup_descriptors_and_of_children_give_one_put() {
    let s = watched("");
    let c = &s.core;
    let f = s.create("f", 0);
    c.write(f, 0, b"abc").unwrap();
    for _ in 0..3 {
        c.flush_write(f, 0).unwrap(); // dup'd descriptors, an exec'd child's copy
    }
    s.release(f);
    let p = pending(c);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].2, p[0].3.as_str(), p[0].5),
        (3, md5(b"abc").as_str(), false)
    );
}

#[test]
fn a_put_recorded_at_close_survives_a_kill_before_the_release() {
    let s = watched("");
    let f = s.create("f", 0);
    s.core.write(f, 0, b"kept").unwrap();
    s.core.flush_write(f, 0).unwrap();
    let dir = s.dir;
    drop(s.core);
    // No release: the daemon died with the file open. After the restart nothing is held.
    let core = open_core(dir.path());
    let p = pending(&core);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0, p[0].2, p[0].5), (EventKind::Put, 4, false));
    assert_eq!(core.events_pending(), 1);
}

#[test]
fn writes_after_the_last_close_are_announced_at_the_release() {
    let s = watched("");
    let c = &s.core;
    let f = s.create("f", 0);
    c.write(f, 0, b"one").unwrap();
    c.flush_write(f, 0).unwrap();
    c.write(f, 3, b" two").unwrap(); // e.g. written back from an mmap after close
    s.release(f);
    let p = pending(c);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].2, p[0].3.as_str()), (7, md5(b"one two").as_str()));
}

#[test]
fn a_file_removed_while_open_gives_its_put_then_its_delete() {
    let s = watched("");
    let c = &s.core;
    let f = s.create("f", 0);
    c.write(f, 0, b"data").unwrap();
    c.flush_write(f, 0).unwrap();
    c.unlink(1000, s.bucket, &n("f")).unwrap();
    let p = pending(c);
    let kinds: Vec<_> = p.iter().map(|e| (e.0, e.5)).collect();
    assert_eq!(kinds, [(EventKind::Put, true), (EventKind::Delete, false)]);
    s.release(f);
    let kinds: Vec<_> = pending(c).iter().map(|e| (e.0, e.5)).collect();
    assert_eq!(kinds, [(EventKind::Put, false), (EventKind::Delete, false)]);
}

#[test]
fn every_event_names_the_uid_that_made_the_change() {
    let s = watched("");
    let c = &s.core;
    let f = s.create("f", 1000);
    c.write(f, 0, b"x").unwrap();
    c.flush_write(f, 55).unwrap();
    s.release(f);
    c.rename_as(
        77,
        s.bucket,
        &n("f"),
        s.bucket,
        &n("g"),
        RenameMode::Replace,
    )
    .unwrap();
    c.setxattr(88, f, b"user.k", b"v", SetMode::Upsert).unwrap();
    c.unlink(99, s.bucket, &n("g")).unwrap();
    let got: Vec<(EventKind, String, u32)> =
        pending(c).into_iter().map(|e| (e.0, e.1, e.4)).collect();
    assert_eq!(
        got,
        [
            (EventKind::Put, "f".into(), 55),
            (EventKind::Copy, "g".into(), 77),
            (EventKind::Delete, "f".into(), 77),
            (EventKind::MetadataSet, "g".into(), 88),
            (EventKind::Delete, "g".into(), 99),
        ]
    );
}

#[test]
fn rename_exchange_gives_a_copy_at_each_key() {
    let s = watched("events = [\"ObjectCreated:Copy\"]");
    let c = &s.core;
    for (name, data) in [("a", &b"AAA"[..]), ("b", b"B")] {
        let f = s.create(name, 0);
        c.write(f, 0, data).unwrap();
        s.release(f);
    }
    c.rename_as(
        0,
        s.bucket,
        &n("a"),
        s.bucket,
        &n("b"),
        RenameMode::Exchange,
    )
    .unwrap();
    let mut got: Vec<(String, u64, String)> = pending(c)
        .into_iter()
        .map(|e| {
            assert_eq!(e.0, EventKind::Copy);
            (e.1, e.2, e.3)
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("a".into(), 1, md5(b"B")), ("b".into(), 3, md5(b"AAA"))]
    );
}

#[test]
fn xattr_changes_give_metadata_set_with_the_omap_they_leave() {
    let s = watched("events = [\"ObjectMetadata:*\"]");
    let c = &s.core;
    let f = s.create("f", 0);
    s.release(f);
    c.setxattr(0, f, b"user.color", b"red", SetMode::Upsert)
        .unwrap();
    c.setxattr(0, f, b"user.shape", b"round", SetMode::Upsert)
        .unwrap();
    c.removexattr(0, f, b"user.color").unwrap();
    let omaps: Vec<Vec<(Vec<u8>, Vec<u8>)>> = c
        .pending_events(0, 100)
        .unwrap()
        .into_iter()
        .map(|p| p.event.unwrap().metadata)
        .collect();
    let kv = |k: &str, v: &str| (k.as_bytes().to_vec(), v.as_bytes().to_vec());
    assert_eq!(
        omaps,
        [
            vec![kv("color", "red")],
            vec![kv("color", "red"), kv("shape", "round")],
            vec![kv("shape", "round")],
        ]
    );
}

#[test]
fn a_handler_that_changes_only_the_omap_gives_metadata_set_not_put() {
    let s = watched("");
    let c = &s.core;
    let f = s.create("f", 0);
    c.write(f, 0, b"data").unwrap();
    s.release(f);
    let before = pending(c).len();
    let target = Target {
        ino: f,
        entry: None,
        path: None,
        uid: 42,
        may_shrink: true,
        may_write: true,
        caller: None,
        cause: None,
    };
    let script = b"function h() objclass.map_set_val('k', 'v') end objclass.register(h)";
    let code = Code::Inline {
        script,
        method: "h",
    };
    assert_eq!(c.call(&target, code, b"").unwrap().outcome.result, 0);
    let p = pending(c);
    assert_eq!(p.len(), before + 1);
    let last = p.last().unwrap();
    assert_eq!((last.0, last.2, last.4), (EventKind::MetadataSet, 4, 42));
}

#[test]
fn a_triggers_own_changes_are_not_routed_back_to_it() {
    let s = watched("[[notification]]\nid = \"thumbs\"\ncall = \"x.y\"\n");
    let c = &s.core;
    let f = s.create("f", 0);
    s.release(f);
    // The client's write: both notifications want it.
    let routed: Vec<String> = c
        .pending_events(0, 100)
        .unwrap()
        .into_iter()
        .map(|p| p.event.unwrap().notification)
        .collect();
    assert_eq!(routed, ["all", "thumbs"]);
    c.ack_events(
        &c.pending_events(0, 100)
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // The trigger's call writes the object: only the other notification hears of it.
    let target = Target {
        ino: f,
        entry: None,
        path: None,
        uid: 0,
        may_shrink: true,
        may_write: true,
        caller: None,
        cause: Some("thumbs".into()),
    };
    let script = b"function h() objclass.write_full('made') end objclass.register(h)";
    let code = Code::Inline {
        script,
        method: "h",
    };
    assert_eq!(c.call(&target, code, b"").unwrap().outcome.result, 0);
    let routed: Vec<(String, String)> = c
        .pending_events(0, 100)
        .unwrap()
        .into_iter()
        .map(|p| {
            let e = p.event.unwrap();
            (e.notification, e.target)
        })
        .collect();
    assert_eq!(routed, [("all".to_string(), "t".to_string())]);
}

#[test]
fn the_pending_gauge_follows_the_queue_and_survives_a_reopen() {
    let s = watched("");
    let c = &s.core;
    for name in ["a", "b", "c"] {
        let f = s.create(name, 0);
        s.release(f);
    }
    assert_eq!((c.events_pending(), c.events_queued()), (3, 3));
    let first = c.pending_events(0, 1).unwrap()[0].seq;
    c.ack_events(&[first]).unwrap();
    assert_eq!(c.events_pending(), 2);
    let dir = s.dir;
    drop(s.core);
    let core = open_core(dir.path());
    assert_eq!((core.events_pending(), core.events_queued()), (2, 0));
}

#[test]
fn buckets_without_notifications_queue_nothing() {
    let s = watched("");
    let c = &s.core;
    let other = c.mkdir(ctx(0), ROOT, &n("quiet"), 0o755).unwrap();
    let f = c.create(ctx(0), other.ino, &n("f"), 0o644).unwrap();
    c.open_file(f.ino).unwrap();
    c.begin_write(f.ino, 0, true).unwrap();
    c.write(f.ino, 0, b"x").unwrap();
    c.flush_write(f.ino, 0).unwrap();
    c.end_write(f.ino).unwrap();
    c.setxattr(0, f.ino, b"user.k", b"v", SetMode::Upsert)
        .unwrap();
    c.unlink(0, other.ino, &n("f")).unwrap();
    assert!(pending(c).is_empty());
}
