//! Several mounts of one shared store, without a kernel: two `Core`s on one store, each test
//! run on two engines: the in-memory one with a shared engine's semantics (`store::memory`:
//! revisions, checked commits) and the real shared backend (etcd + Ceph RADOS, from
//! `common::cluster`). Racing operations from two of them stay atomic: one of two creates of
//! a name wins, two streams of increments all count, and the store checks clean afterwards.

mod common;

use std::path::Path;
use std::sync::Arc;

use lunafs::core::call::{Code, Target};
use lunafs::core::dir::RenameMode;
use lunafs::core::{fsck::fsck, Core, Ctx, Name, ROOT};
use lunafs::error::Error;
use lunafs::store::data::inline::Inline;
use lunafs::store::memory::Memory;
use lunafs::store::Store;

const CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
};

fn n(s: &str) -> Name {
    Name::new(s.as_bytes()).unwrap()
}

/// One filesystem, on one of the engines.
#[derive(Clone)]
enum Fs {
    Memory(Memory),
    Shared(String),
}

impl Fs {
    fn new(shared: bool) -> Fs {
        match shared {
            false => Fs::Memory(Memory::default()),
            true => Fs::Shared(common::cluster::cluster().format("core-shared")),
        }
    }

    /// The store as one more mount opens it.
    fn store(&self) -> Store {
        match self {
            Fs::Memory(mem) => Store::with_engines(
                Box::new(mem.clone()),
                Box::new(Inline),
                Path::new("/memory"),
            )
            .unwrap(),
            Fs::Shared(url) => common::cluster::cluster().open(url),
        }
    }
}

/// Two mounts of one new filesystem with a bucket `b`; returns them and the bucket.
/// Both follow the other's changes as a mount does, so on etcd their reads go through the
/// cache the watch keeps (and the races below run against it).
fn two_mounts(shared: bool) -> (Fs, Arc<Core>, Arc<Core>, u64) {
    let fs = Fs::new(shared);
    let a = mount(&fs);
    let b = mount(&fs);
    let bucket = a.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap().ino;
    (fs, a, b, bucket)
}

fn mount(fs: &Fs) -> Arc<Core> {
    let c = Arc::new(Core::with_store(fs.store(), (0, 0)).unwrap());
    c.follow_other_mounts(Arc::new(|_| {})).unwrap();
    c
}

/// Waits (at most 10 s) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed().as_secs() < 10, "{what}: not within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Each test body, once per engine: `NAME::memory` and `NAME::shared`.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn memory() {
                super::$name(false)
            }
            #[test]
            fn shared() {
                super::$name(true)
            }
        }
    )*};
}

on_both_engines!(
    of_two_creates_of_one_name_exactly_one_wins,
    inode_numbers_from_two_mounts_never_collide,
    handler_increments_and_rgw_increments_from_two_mounts_all_count,
    of_two_renames_of_one_name_one_wins_and_the_tree_stays_sound,
    data_written_on_one_mount_reads_back_on_the_other,
);

/// Runs `f(core, i)` for i in 0..n on both mounts at once; returns each mount's results.
fn race<T: Send + 'static>(
    a: &Arc<Core>,
    b: &Arc<Core>,
    n: usize,
    f: fn(&Core, usize) -> T,
) -> (Vec<T>, Vec<T>) {
    let run = |c: Arc<Core>| std::thread::spawn(move || (0..n).map(|i| f(&c, i)).collect());
    let (ta, tb) = (run(a.clone()), run(b.clone()));
    (ta.join().unwrap(), tb.join().unwrap())
}

fn assert_clean(fs: &Fs) {
    let report = fsck(&fs.store(), false).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

fn of_two_creates_of_one_name_exactly_one_wins(shared: bool) {
    let (fs, a, b, bucket) = two_mounts(shared);
    let bucket_ino = bucket;
    let (ra, rb) = race(&a, &b, 300, |c, i| {
        let b = c.lookup(ROOT, &n("b")).unwrap().ino;
        c.create(CTX, b, &n(&format!("f{i}")), 0o644).map(|i| i.ino)
    });
    for (x, y) in ra.iter().zip(&rb) {
        match (x, y) {
            (Ok(_), Err(Error::Exists(_))) | (Err(Error::Exists(_)), Ok(_)) => {}
            other => panic!("expected one create to win: {other:?}"),
        }
    }
    assert_eq!(a.readdir(bucket_ino).unwrap().len(), 300);
    assert_clean(&fs);
}

fn inode_numbers_from_two_mounts_never_collide(shared: bool) {
    let (fs, a, b, bucket) = two_mounts(shared);
    let (ra, rb) = race(&a, &b, 400, |c, i| {
        let b = c.lookup(ROOT, &n("b")).unwrap().ino;
        let name = format!("{:p}-{i}", c as *const Core);
        c.create(CTX, b, &n(&name), 0o644).unwrap().ino
    });
    let mut all: Vec<u64> = ra.into_iter().chain(rb).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 800);
    assert_eq!(b.readdir(bucket).unwrap().len(), 800);
    assert_clean(&fs);
}

fn bump(c: &Core, ino: u64) {
    let target = Target {
        ino,
        entry: None,
        path: None,
        uid: 0,
        may_shrink: true,
        may_write: true,
        caller: None,
        cause: None,
    };
    let code = Code::Inline {
        script: common::INCR_CLASS.as_bytes(),
        method: "incr",
    };
    let reply = c.call(&target, code, b"").unwrap();
    assert_eq!(reply.outcome.result, 0, "{:?}", reply.outcome.message);
}

fn handler_increments_and_rgw_increments_from_two_mounts_all_count(shared: bool) {
    let (fs, a, b, bucket) = two_mounts(shared);
    let f = a.create(CTX, bucket, &n("counter"), 0o644).unwrap().ino;
    let before = conflicts(&fs);
    let (ra, rb) = race(&a, &b, 500, |c, _| {
        let f = c.lookup(c.lookup(ROOT, &n("b")).unwrap().ino, &n("counter"));
        bump(c, f.unwrap().ino);
        c.global_add("hits", 1.0).unwrap();
    });
    assert_eq!((ra.len(), rb.len()), (500, 500));
    assert_eq!(b.getxattr(f, b"user.n").unwrap(), b"1000");
    assert_eq!(
        a.global_get("hits").unwrap(),
        Some(lunafs::store::codec::events::GlobalValue::Int(1000))
    );
    // The mounts did get in each other's way, and their operations ran again.
    assert!(
        conflicts(&fs) > before,
        "no conflict: the race never happened"
    );
    assert_clean(&fs);
}

fn of_two_renames_of_one_name_one_wins_and_the_tree_stays_sound(shared: bool) {
    let (fs, a, b, bucket) = two_mounts(shared);
    for i in 0..200 {
        a.create(CTX, bucket, &n(&format!("x{i}")), 0o644).unwrap();
    }
    let (ra, rb) = race(&a, &b, 200, |c, i| {
        let b = c.lookup(ROOT, &n("b")).unwrap().ino;
        let to = format!("{i}-{:p}", c as *const Core);
        c.rename(b, &n(&format!("x{i}")), b, &n(&to), RenameMode::Replace)
    });
    for (x, y) in ra.iter().zip(&rb) {
        match (x, y) {
            (Ok(()), Err(Error::NotFound(_))) | (Err(Error::NotFound(_)), Ok(())) => {}
            other => panic!("expected one rename to win: {other:?}"),
        }
    }
    assert_eq!(a.readdir(bucket).unwrap().len(), 200);
    assert_clean(&fs);
}

/// Commits refused so far (the memory engine counts them; on etcd, the operations that ran
/// again show in the retry counter every store keeps).
fn conflicts(fs: &Fs) -> u64 {
    match fs {
        Fs::Memory(mem) => mem.counts().1,
        Fs::Shared(_) => lunafs::core::conflicts_retried(),
    }
}

fn data_written_on_one_mount_reads_back_on_the_other(shared: bool) {
    let (fs, a, b, bucket) = two_mounts(shared);
    let f = a.create(CTX, bucket, &n("data"), 0o644).unwrap().ino;
    // Past several chunks of either engine, then overwrites inside, a hole and a cut.
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    // Each mount closes the file after writing (close-to-open: a mount may hold its writes
    // until then).
    a.write(f, 0, &big).unwrap();
    a.flush_write(f, 0).unwrap();
    b.write(f, 4_000_000, b"middle").unwrap();
    b.flush_write(f, 0).unwrap();
    a.write(f, 12_000_000, b"after a hole").unwrap();
    a.flush_write(f, 0).unwrap();
    b.setattr(
        f,
        &lunafs::core::object::SetAttr {
            size: Some(12_000_004),
            ..Default::default()
        },
    )
    .unwrap();
    let mut want = big.clone();
    want[4_000_000..4_000_006].copy_from_slice(b"middle");
    want.resize(12_000_000, 0);
    want.extend_from_slice(b"afte");
    for c in [&a, &b] {
        c.revalidate(f).unwrap(); // an open
        let mut got = Vec::new();
        while got.len() < want.len() {
            let part = c.read(f, got.len() as u64, 1 << 20).unwrap();
            assert!(!part.is_empty(), "short read at {}", got.len());
            got.extend_from_slice(&part);
        }
        assert!(got == want, "content differs");
    }
    // Many small writes into one chunk: its slice list is compacted, the bytes stay.
    for i in 0..40u64 {
        a.write(f, i * 1000, format!("w{i:03}").as_bytes()).unwrap();
        a.flush_write(f, 0).unwrap();
    }
    b.revalidate(f).unwrap(); // b opens it
    let head = b.read(f, 0, 40_000).unwrap();
    for i in 0..40usize {
        assert_eq!(&head[i * 1000..i * 1000 + 4], format!("w{i:03}").as_bytes());
        assert_eq!(head[i * 1000 + 4], want[i * 1000 + 4]);
    }
    a.unlink(0, bucket, &n("data")).unwrap();
    assert_clean(&fs);
}

#[test]
fn an_operation_that_keeps_conflicting_fails_with_eio_and_writes_nothing() {
    let (fs, a, _b, bucket) = two_mounts(false);
    let Fs::Memory(mem) = &fs else { unreachable!() };
    mem.refuse_commits(3);
    a.create(CTX, bucket, &n("retried"), 0o644).unwrap();
    mem.refuse_commits(1000);
    let e = a.create(CTX, bucket, &n("refused"), 0o644).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    mem.refuse_commits(0);
    assert!(a.lookup(bucket, &n("refused")).is_err());
    assert!(a.lookup(bucket, &n("retried")).is_ok());
    assert_clean(&fs);
}

#[test]
fn the_collector_removes_only_objects_no_file_references() {
    let fs = Fs::new(true);
    let a = Core::with_store(fs.store(), (0, 0)).unwrap();
    let bucket = a.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap().ino;
    let f = a.create(CTX, bucket, &n("f"), 0o644).unwrap().ino;
    let first: Vec<u8> = (0..5_000_000u32).map(|i| (i % 241) as u8).collect();
    a.write(f, 0, &first).unwrap();
    // Replaces all of chunk 0's bytes: its first object is referenced no more.
    let second = vec![7u8; 4 << 20];
    a.write(f, 0, &second).unwrap();
    let store = fs.store();
    {
        // A change whose commit never comes (the mount died after storing its objects);
        // larger than a slice list holds inline, so it makes an object.
        let mut batch = store.batch();
        let mut edits = lunafs::store::data::Edits::new(first.len() as u64);
        edits.write(100, &[9u8; 20_000]).unwrap();
        batch.apply(f, &edits).unwrap();
    }
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(
        store.collect_garbage(hour).unwrap(),
        0,
        "young objects are left alone"
    );
    assert_eq!(store.collect_garbage(std::time::Duration::ZERO).unwrap(), 2);
    assert_eq!(store.collect_garbage(std::time::Duration::ZERO).unwrap(), 0);
    let mut want = second;
    want.extend_from_slice(&first[4 << 20..]);
    let mut got = Vec::new();
    while got.len() < want.len() {
        got.extend(a.read(f, got.len() as u64, 1 << 20).unwrap());
    }
    assert!(got == want, "the file's bytes survived the collection");
    assert_clean(&fs);
}

#[test]
fn reads_again_are_answered_from_memory_and_changes_elsewhere_reach_it() {
    let (fs, a, b, bucket) = two_mounts(true);
    let f = a.create(CTX, bucket, &n("f"), 0o644).unwrap().ino;
    eventually("the watch of b is live", || {
        b.getattr(f).unwrap();
        let before = b.backend_requests();
        b.getattr(f).unwrap();
        b.backend_requests() == before
    });
    let before = b.backend_requests();
    for _ in 0..100 {
        assert_eq!(b.getattr(f).unwrap().perm, 0o644);
        assert_eq!(b.lookup(bucket, &n("f")).unwrap().ino, f);
    }
    assert!(
        b.backend_requests() - before < 5,
        "200 reads of 2 unchanged keys sent {} requests",
        b.backend_requests() - before
    );
    let chmod = lunafs::core::object::SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    a.setattr(f, &chmod).unwrap();
    eventually("b sees the chmod", || b.getattr(f).unwrap().perm == 0o600);
    // An open asks etcd itself: it sees a change at once, and what the file owns with it.
    a.write(f, 0, b"closed on a").unwrap();
    a.flush_write(f, 0).unwrap();
    assert_eq!(b.revalidate(f).unwrap().size, 11);
    assert_eq!(b.read(f, 0, 100).unwrap(), b"closed on a");
    // A commit on b whose cached read the watch has not caught up with yet conflicts and
    // runs again: b's chmod lands on the file as a left it, nothing of a's is lost.
    a.setattr(
        f,
        &lunafs::core::object::SetAttr {
            size: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    b.setattr(f, &chmod).unwrap();
    assert_eq!(a.revalidate(f).unwrap().size, 4);
    drop((a, b));
    assert_clean(&fs);
}

#[test]
fn writes_are_held_until_close_then_stored_in_few_commits() {
    let (fs, a, b, bucket) = two_mounts(true);
    let f = a.create(CTX, bucket, &n("f"), 0o644).unwrap().ino;
    let before = a.backend_requests();
    let block: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    for i in 0..256u64 {
        a.write(f, i * 4096, &block).unwrap();
    }
    // This mount sees its writes: size, content, and after a cut, the cut.
    assert_eq!(a.getattr(f).unwrap().size, 1 << 20);
    assert_eq!(a.read(f, 4096 * 7, 4096).unwrap(), block);
    assert_eq!(b.revalidate(f).unwrap().size, 0, "not closed yet");
    a.setattr(
        f,
        &lunafs::core::object::SetAttr {
            size: Some(10_000),
            ..Default::default()
        },
    )
    .unwrap();
    a.write(f, 20_000, b"tail").unwrap();
    assert_eq!(a.getattr(f).unwrap().size, 20_004);
    a.flush_write(f, 0).unwrap();
    let sent = a.backend_requests() - before;
    assert!(sent < 40, "256 writes and a truncate sent {sent} requests");
    let mut want = block.repeat(3);
    want.truncate(10_000);
    want.resize(20_000, 0);
    want.extend_from_slice(b"tail");
    assert_eq!(b.revalidate(f).unwrap().size, 20_004);
    assert_eq!(b.read(f, 0, 30_000).unwrap(), want);
    // fsync stores them too, without a close.
    a.write(f, 0, b"synced").unwrap();
    a.sync().unwrap();
    assert_eq!(b.revalidate(f).unwrap().size, 20_004);
    assert_eq!(b.read(f, 0, 6).unwrap(), b"synced");
    // So does an fsync of the one file (what FUSE fsync calls).
    a.write(f, 6, b"-file").unwrap();
    a.sync_file(f).unwrap();
    b.revalidate(f).unwrap();
    assert_eq!(b.read(f, 0, 11).unwrap(), b"synced-file");
    drop((a, b));
    assert_clean(&fs);
}

#[test]
fn held_writes_spread_over_many_chunks_are_stored_in_transactions_etcd_takes() {
    // 300 writes 4 MiB apart, held and stored in several changes (at most 64 chunks each,
    // within the 128 writes a default etcd takes in one transaction; the test cluster allows
    // more, so this checks the content, not the limit).
    let (fs, a, b, bucket) = two_mounts(true);
    let f = a.create(CTX, bucket, &n("sparse"), 0o644).unwrap().ino;
    for i in 0..300u64 {
        a.write(f, i << 22, format!("piece{i:03}").as_bytes())
            .unwrap();
    }
    a.flush_write(f, 0).unwrap();
    b.revalidate(f).unwrap();
    for i in [0u64, 63, 64, 150, 299] {
        assert_eq!(
            b.read(f, i << 22, 8).unwrap(),
            format!("piece{i:03}").as_bytes()
        );
    }
    assert_eq!(b.read(f, (5 << 22) + 100, 4).unwrap(), vec![0; 4], "a hole");
    drop((a, b));
    assert_clean(&fs);
}

#[test]
fn scattered_writes_in_one_chunk_read_back_through_their_objects() {
    // Two stores of 100 scattered pieces each into one chunk: two objects of many pieces, the
    // second cutting into the first; read whole and in parts on the other mount.
    let (fs, a, b, bucket) = two_mounts(true);
    let f = a.create(CTX, bucket, &n("scattered"), 0o644).unwrap().ino;
    let mut model = vec![0u8; 1 << 20];
    for round in 0..2u64 {
        for i in 0..100u64 {
            let at = (i * 7919 + round * 3001) % ((1 << 20) - 5000);
            let bytes = vec![(i + round * 100) as u8 + 1; 1000 + (i as usize % 4) * 1000];
            a.write(f, at, &bytes).unwrap();
            model[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        a.flush_write(f, 0).unwrap();
    }
    let size = a.getattr(f).unwrap().size as usize;
    model.truncate(size);
    b.revalidate(f).unwrap();
    assert!(
        b.read(f, 0, 1 << 21).unwrap() == model,
        "whole chunk differs"
    );
    for (at, len) in [(0usize, 4096usize), (123_457, 10_000), (size - 3000, 3000)] {
        let got = b.read(f, at as u64, len as u32).unwrap();
        assert!(
            got == model[at..at + len],
            "bytes {at}..{} differ",
            at + len
        );
    }
    drop((a, b));
    assert_clean(&fs);
}

#[test]
fn small_files_live_in_their_slice_lists_and_grow_into_objects() {
    let (fs, a, b, bucket) = two_mounts(true);
    let Fs::Shared(url) = &fs else { unreachable!() };
    let f = a.create(CTX, bucket, &n("small"), 0o644).unwrap().ino;
    let small: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    a.write(f, 0, &small).unwrap();
    a.sync_file(f).unwrap();
    assert_eq!(
        common::cluster::stored_bytes(url),
        0,
        "a 4 KiB file makes no RADOS object"
    );
    b.revalidate(f).unwrap();
    assert_eq!(
        b.read(f, 0, 8192).unwrap(),
        small,
        "read on the other mount"
    );
    // Past what a list holds inline, new bytes go to an object; the inline ones stay.
    let big = vec![5u8; 40_000];
    a.write(f, 4096, &big).unwrap();
    a.sync_file(f).unwrap();
    assert!(common::cluster::stored_bytes(url) >= 40_000);
    let mut want = small.clone();
    want.extend_from_slice(&big);
    b.revalidate(f).unwrap();
    assert_eq!(b.read(f, 0, 1 << 20).unwrap(), want);
    // A truncate into the inline bytes keeps what is left of them.
    let cut = lunafs::core::object::SetAttr {
        size: Some(100),
        ..Default::default()
    };
    a.setattr(f, &cut).unwrap();
    b.revalidate(f).unwrap();
    assert_eq!(b.read(f, 0, 1 << 20).unwrap(), &small[..100]);
    assert_clean(&fs);
}
