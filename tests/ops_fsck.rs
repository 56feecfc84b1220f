//! `lunafs fsck`: finds each kind of damage injected straight into RocksDB, `--repair` fixes
//! the safe ones, and a store killed under load checks clean.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{TestFs, LUNAFS};
use lunafs::store::codec::{Dentry, Kind};
use lunafs::store::data::Edits;
use lunafs::store::Store;

fn fsck(store: &std::path::Path, repair: bool) -> (i32, String) {
    let mut cmd = Command::new(LUNAFS);
    cmd.arg("fsck").arg(store);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn fsck_finds_injected_damage_and_repairs_the_safe_kinds() {
    let mut t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("f"), vec![7u8; 100_000]).unwrap();
    fs::write(b.join("g"), b"g").unwrap();
    fs::create_dir(b.join("d")).unwrap();
    let ino = |p: &str| fs::metadata(b.join(p)).unwrap().ino();
    let (bucket, f, g, d) = (
        fs::metadata(&b).unwrap().ino(),
        ino("f"),
        ino("g"),
        ino("d"),
    );
    t.unmount();
    assert_eq!(fsck(&t.store, false).0, 0, "a fresh store must check clean");
    {
        let store = Store::open(&t.store).unwrap();
        let mut batch = store.batch();
        batch.put_dentry(
            bucket,
            b"ghost",
            Dentry {
                ino: 999_999,
                kind: Kind::File,
            },
        );
        batch.put_dentry(
            bucket,
            b"alias",
            Dentry {
                ino: g,
                kind: Kind::Dir,
            },
        );
        let mut fi = store.inode(f).unwrap().unwrap();
        fi.nlink = 5;
        batch.put_inode(&fi);
        // Bytes staged at chunk 50 while the inode keeps its size: data past the size.
        let mut junk = Edits::new(100_000);
        junk.write(50 * 16 * 1024, b"junk past the end").unwrap();
        batch.apply(f, &junk).unwrap();
        batch.put_omap(888_888, b"k", b"v");
        batch.put_orphan(d);
        let mut stray = store.inode(g).unwrap().unwrap();
        stray.ino = 777_777;
        batch.put_inode(&stray);
        batch.commit().unwrap();
    }
    let (code, out) = fsck(&t.store, false);
    assert_eq!(code, 4, "{out}");
    for needle in [
        "\"ghost\"",
        "points to missing inode 999999",
        "records kind Dir",
        &format!("inode {f}: nlink 5 should be 1"),
        &format!("inode {f}: data at {} lies past the size", 50 * 16 * 1024),
        "attribute k of missing inode 888888",
        &format!("orphan record for inode {d}"),
        "inode 777777 has no entries",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let (code, out) = fsck(&t.store, true);
    assert_eq!(code, 1, "{out}");
    let (code, out) = fsck(&t.store, false);
    assert_eq!(code, 0, "repair left problems:\n{out}");
    t.restart();
    assert_eq!(fs::read(b.join("f")).unwrap(), vec![7u8; 100_000]);
    assert_eq!(fs::metadata(b.join("f")).unwrap().nlink(), 1);
    assert_eq!(fs::read(b.join("alias")).unwrap(), b"g");
    assert_eq!(fs::metadata(b.join("g")).unwrap().nlink(), 2);
    assert!(fs::metadata(b.join("ghost")).is_err());
}

#[test]
fn fsck_of_a_store_killed_under_load_is_clean() {
    let mut t = TestFs::mount();
    let b = Arc::new(t.bucket("b"));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (b, stop) = (b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let dir = b.join(format!("w{w}"));
                    let _ = fs::create_dir_all(&dir);
                    let _ = fs::write(
                        dir.join(format!("f{i}")),
                        vec![i as u8; 20_000 + i as usize],
                    );
                    let _ = fs::rename(dir.join(format!("f{i}")), dir.join(format!("r{}", i % 50)));
                    if i.is_multiple_of(3) {
                        let _ = fs::remove_file(dir.join(format!("r{}", (i + 7) % 50)));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    t.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let (code, out) = fsck(&t.store, false);
    assert_eq!(code, 0, "{out}");
    t.restart();
}

#[test]
fn fsck_refuses_a_store_in_use_and_a_non_store() {
    let t = TestFs::mount();
    let (code, out) = fsck(&t.store, false);
    assert_ne!(code, 0);
    assert!(out.contains("in use by another lunafs"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = fsck(dir.path(), false);
    assert_ne!(code, 0);
    assert!(out.contains("not a lunafs store"), "{out}");
}
