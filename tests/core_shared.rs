//! Several mounts of one shared store, without a kernel or etcd: `Core`s on one in-memory
//! engine with a shared engine's semantics (`store::memory`: revisions, checked commits).
//! Racing operations from two of them stay atomic: one of two creates of a name wins, two
//! streams of increments all count, and the store checks clean afterwards.

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

fn store(mem: &Memory) -> Store {
    Store::with_engines(
        Box::new(mem.clone()),
        Box::new(Inline),
        Path::new("/memory"),
    )
    .unwrap()
}

/// Two mounts of one new filesystem with a bucket `b`; returns them and the bucket.
fn two_mounts() -> (Memory, Arc<Core>, Arc<Core>, u64) {
    let mem = Memory::default();
    let a = Arc::new(Core::with_store(store(&mem), (0, 0)).unwrap());
    let b = Arc::new(Core::with_store(store(&mem), (0, 0)).unwrap());
    let bucket = a.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap().ino;
    (mem, a, b, bucket)
}

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

fn assert_clean(mem: &Memory) {
    let report = fsck(&store(mem), false).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn of_two_creates_of_one_name_exactly_one_wins() {
    let (mem, a, b, bucket) = two_mounts();
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
    assert_clean(&mem);
}

#[test]
fn inode_numbers_from_two_mounts_never_collide() {
    let (mem, a, b, bucket) = two_mounts();
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
    assert_clean(&mem);
}

const BUMP: &str = r#"
function bump(input, output)
  local ok, v = pcall(objclass.map_get_val, "n")
  local n = ok and tonumber(v:str()) or 0
  objclass.map_set_val("n", tostring(n + 1))
end
objclass.register(bump)
"#;

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
        script: BUMP.as_bytes(),
        method: "bump",
    };
    let reply = c.call(&target, code, b"").unwrap();
    assert_eq!(reply.outcome.result, 0, "{:?}", reply.outcome.message);
}

#[test]
fn handler_increments_and_rgw_increments_from_two_mounts_all_count() {
    let (mem, a, b, bucket) = two_mounts();
    let f = a.create(CTX, bucket, &n("counter"), 0o644).unwrap().ino;
    let before = mem.counts().1;
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
        mem.counts().1 > before,
        "no conflict: the race never happened"
    );
    assert_clean(&mem);
}

#[test]
fn of_two_renames_of_one_name_one_wins_and_the_tree_stays_sound() {
    let (mem, a, b, bucket) = two_mounts();
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
    assert_clean(&mem);
}

#[test]
fn an_operation_that_keeps_conflicting_fails_with_eio_and_writes_nothing() {
    let (mem, a, _b, bucket) = two_mounts();
    mem.refuse_commits(3);
    a.create(CTX, bucket, &n("retried"), 0o644).unwrap();
    mem.refuse_commits(1000);
    let e = a.create(CTX, bucket, &n("refused"), 0o644).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    mem.refuse_commits(0);
    assert!(a.lookup(bucket, &n("refused")).is_err());
    assert!(a.lookup(bucket, &n("retried")).is_ok());
    assert_clean(&mem);
}
