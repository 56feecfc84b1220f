//! Durability: what close() or fsync() acknowledged survives kill -9 of lunafs, and the store
//! reopens cleanly; unmounting with files open is clean.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;

use common::TestFs;

#[test]
fn fsynced_and_closed_data_survives_kill_9() {
    let mut t = TestFs::mount();
    let b = t.bucket("b");
    let mut expected = Vec::new();
    for i in 0..40 {
        let body: Vec<u8> = (0..(i * 9_001 + 17)).map(|j| (j * 31 + i) as u8).collect();
        let p = b.join(format!("dir{}/f{i}", i % 4));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all(&body).unwrap();
        if i % 2 == 0 {
            f.sync_all().unwrap();
        }
        drop(f); // close() returned: durable against kill -9 even without fsync
        expected.push((p, body));
    }
    // A file still open and fsynced mid-way.
    let mut open = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(b.join("open"))
        .unwrap();
    open.write_all(b"synced part").unwrap();
    open.sync_data().unwrap();
    t.kill9();
    drop(open);
    t.restart();
    for (p, body) in &expected {
        assert_eq!(&fs::read(p).unwrap(), body, "{}", p.display());
    }
    assert_eq!(fs::read(b.join("open")).unwrap(), b"synced part");
    // The store is usable after the crash.
    fs::write(b.join("after"), b"ok").unwrap();
    t.remount();
    assert_eq!(fs::read(b.join("after")).unwrap(), b"ok");
}

#[test]
fn unlinked_open_file_is_purged_after_a_crash() {
    let mut t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("f"), vec![1u8; 300_000]).unwrap();
    let f = fs::File::open(b.join("f")).unwrap();
    fs::remove_file(b.join("f")).unwrap();
    t.kill9();
    drop(f);
    t.restart();
    // The embedded store purges at once (the dead mount held its lock); a shared one once the
    // dead mount's session lease expired, by the leader's housekeeping.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !t.log().contains("purged inodes unlinked while open") {
        assert!(
            std::time::Instant::now() < deadline,
            "never purged:\n{}",
            t.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(fs::read_dir(&b).unwrap().next().is_none());
}

#[test]
fn unmount_with_open_files_is_clean() {
    let mut t = TestFs::mount();
    let b = t.bucket("b");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(b.join("f"))
        .unwrap();
    f.write_all(b"written").unwrap();
    f.flush().unwrap();
    // A lazy unmount detaches while the file is open; the daemon exits 0 once it closes.
    let out = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&t.mnt)
        .output()
        .unwrap();
    assert!(out.status.success());
    drop(f);
    t.unmount_after_detach();
    t.restart();
    assert_eq!(fs::read(b.join("f")).unwrap(), b"written");
}
