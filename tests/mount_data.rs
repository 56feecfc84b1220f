//! Object data through a real mount: random writes, append, truncate, holes, files past 4 GiB,
//! unlink of open files, and a property test against an in-memory model.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use common::{errno_of, TestFs};
use proptest::prelude::*;

#[test]
fn write_read_overwrite_across_chunk_boundaries() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(b.join("f"), &data).unwrap();
    assert_eq!(fs::read(b.join("f")).unwrap(), data);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("f"))
        .unwrap();
    f.write_all_at(b"BOUNDARY", 65_532).unwrap();
    let mut expect = data.clone();
    expect[65_532..65_540].copy_from_slice(b"BOUNDARY");
    let mut buf = vec![0u8; 16];
    f.read_exact_at(&mut buf, 65_528).unwrap();
    assert_eq!(buf, &expect[65_528..65_544]);
    drop(f);
    assert_eq!(fs::read(b.join("f")).unwrap(), expect);
}

#[test]
fn o_append_writes_go_to_the_end() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("log"), b"one\n").unwrap();
    for line in ["two\n", "three\n"] {
        let mut f = OpenOptions::new().append(true).open(b.join("log")).unwrap();
        f.write_all(line.as_bytes()).unwrap();
    }
    // Two handles appending in turn.
    let mut f1 = OpenOptions::new().append(true).open(b.join("log")).unwrap();
    let mut f2 = OpenOptions::new().append(true).open(b.join("log")).unwrap();
    f1.write_all(b"four\n").unwrap();
    f2.write_all(b"five\n").unwrap();
    drop((f1, f2));
    assert_eq!(
        fs::read_to_string(b.join("log")).unwrap(),
        "one\ntwo\nthree\nfour\nfive\n"
    );
    common::sh(&format!("echo six >> {}", b.join("log").display()));
    assert!(fs::read_to_string(b.join("log"))
        .unwrap()
        .ends_with("five\nsix\n"));
}

#[test]
fn truncate_shrinks_and_grows_with_zeros() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("f"), vec![0xAB; 200_000]).unwrap();
    let f = OpenOptions::new().write(true).open(b.join("f")).unwrap();
    f.set_len(70_000).unwrap();
    f.set_len(150_000).unwrap();
    drop(f);
    let got = fs::read(b.join("f")).unwrap();
    assert_eq!(got.len(), 150_000);
    assert!(got[..70_000].iter().all(|&x| x == 0xAB));
    assert!(
        got[70_000..].iter().all(|&x| x == 0),
        "old bytes came back after truncate"
    );
    // O_TRUNC on open.
    fs::write(b.join("f"), b"short").unwrap();
    assert_eq!(fs::read(b.join("f")).unwrap(), b"short");
    assert_eq!(
        errno_of(fs::File::open(b.join("f")).unwrap().set_len(1)),
        libc::EINVAL
    );
}

#[test]
fn sparse_file_of_5_gib_reads_back_past_4_gib() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(b.join("big"))
        .unwrap();
    let offsets = [0u64, 4 << 30, (4 << 30) + 65_535, (5 << 30) - 8];
    for (i, &off) in offsets.iter().enumerate() {
        f.write_all_at(format!("mark{i}!!!").as_bytes(), off)
            .unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    let meta = fs::metadata(b.join("big")).unwrap();
    assert_eq!(meta.len(), 5 << 30);
    let f = fs::File::open(b.join("big")).unwrap();
    for (i, &off) in offsets.iter().enumerate() {
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(&buf, format!("mark{i}!!!").as_bytes(), "at {off}");
    }
    let mut hole = vec![1u8; 1 << 20];
    f.read_exact_at(&mut hole, 3 << 30).unwrap();
    assert!(hole.iter().all(|&x| x == 0));
    // The hole costs no space in the store.
    let store_bytes = t.stored_bytes();
    assert!(
        store_bytes < 100 << 20,
        "store is {store_bytes} bytes for a sparse file"
    );
}

#[test]
fn unlinked_open_file_lives_until_last_close() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("f"), b"still here").unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.join("f"))
        .unwrap();
    fs::remove_file(b.join("f")).unwrap();
    assert_eq!(errno_of(fs::metadata(b.join("f"))), libc::ENOENT);
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    f.write_all(b" and more").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    s.clear();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here and more");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // Opening it again through /proc works while it is open, as on ext4.
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    assert_eq!(fs::read(&proc_path).unwrap(), b"still here and more");
    drop(f);
    // A new file of the same name is a new object.
    fs::write(b.join("f"), b"new").unwrap();
    assert_eq!(fs::read(b.join("f")).unwrap(), b"new");
}

#[test]
fn data_and_metadata_survive_remount() {
    let mut t = TestFs::mount();
    let b = t.bucket("b");
    fs::create_dir(b.join("d")).unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(b.join("d/f"), &data).unwrap();
    std::os::unix::fs::symlink("d/f", b.join("ln")).unwrap();
    xattr::set(b.join("d/f"), "user.k", b"v\0w").unwrap();
    t.remount();
    assert_eq!(fs::read(b.join("ln")).unwrap(), data);
    assert_eq!(
        xattr::get(b.join("d/f"), "user.k").unwrap().unwrap(),
        b"v\0w"
    );
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Truncate(u64),
    Read(u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets cluster around chunk boundaries (16 KiB) to hit partial chunks.
    let off = prop_oneof![
        0u64..300_000,
        (0u64..20).prop_map(|c| c * 16_384),
        (1u64..20).prop_map(|c| c * 16_384 - 3)
    ];
    prop_oneof![
        4 => (off.clone(), prop::collection::vec(any::<u8>(), 1..140_000)).prop_map(|(o, d)| Op::Write(o, d)),
        1 => off.clone().prop_map(Op::Truncate),
        2 => (off, 1usize..150_000).prop_map(|(o, l)| Op::Read(o, l)),
    ]
}

#[test]
fn random_writes_truncates_and_reads_match_a_model() {
    let mut t = TestFs::mount();
    let b = t.bucket("b");
    let models = std::sync::Mutex::new(Vec::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&prop::collection::vec(op(), 1..120), |ops| {
            let path = b.join(format!(
                "f{}",
                case.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut model: Vec<u8> = Vec::new();
            for op in &ops {
                match op {
                    Op::Write(off, data) => {
                        f.write_all_at(data, *off).unwrap();
                        let end = *off as usize + data.len();
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[*off as usize..end].copy_from_slice(data);
                    }
                    Op::Truncate(len) => {
                        f.set_len(*len).unwrap();
                        model.resize(*len as usize, 0);
                    }
                    Op::Read(off, len) => {
                        let mut buf = vec![0u8; *len];
                        let n = read_full_at(&f, &mut buf, *off);
                        let start = (*off as usize).min(model.len());
                        let end = (start + len).min(model.len());
                        prop_assert_eq!(&buf[..n], &model[start..end]);
                    }
                }
            }
            drop(f);
            // Through a fresh open, bypassing nothing the kernel may cache: the whole file.
            prop_assert_eq!(&fs::read(&path).unwrap(), &model);
            models.lock().unwrap().push((path, model));
            Ok(())
        })
        .unwrap();
    // After a remount the kernel's page cache is gone: this reads what the store holds.
    t.remount();
    for (path, model) in models.into_inner().unwrap() {
        assert_eq!(fs::read(&path).unwrap(), model, "{}", path.display());
    }
}

fn read_full_at(f: &fs::File, buf: &mut [u8], off: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

#[test]
fn without_writeback_cache_append_and_mmap_write_in_place() {
    let t = TestFs::with_options("allow_other,no_writeback_cache");
    let b = t.bucket("b");
    fs::write(b.join("log"), b"one\n").unwrap();
    let mut f = OpenOptions::new().append(true).open(b.join("log")).unwrap();
    f.write_all(b"two\n").unwrap();
    drop(f);
    assert_eq!(fs::read(b.join("log")).unwrap(), b"one\ntwo\n");
    // A shared mapping of an O_APPEND file writes back in place, not at the end.
    let code = r#"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_APPEND)
m = mmap.mmap(fd, 0)
m[0:3] = b"ONE"
m.flush()
m.close()
os.close(fd)
"#;
    common::sh(&format!("python3 -c '{code}' {}", b.join("log").display()));
    assert_eq!(fs::read(b.join("log")).unwrap(), b"ONE\ntwo\n");
}
