//! Two mounts (two lunafs processes, two mountpoints) of one shared filesystem on a real
//! etcd and a real Ceph (`common::cluster`): what one writes and closes the other reads; names
//! made, renamed and removed on one are seen on the other; racing creates of one name from
//! both have exactly one winner; handler calls from both on one object are atomic; tar on one
//! reads what tar on the other wrote; and the filesystem checks clean afterwards.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{cluster, fsck_clean};
use common::{succeeded, write_and_close, TestFs, LUNAFS};

/// Two mounts of a new filesystem. The kernel may cache attributes and entries for an hour:
/// only the store's watch (kernel invalidations) can make one mount see the other's changes
/// in time, so a missed invalidation fails the checks below.
fn two_mounts() -> (String, TestFs, TestFs) {
    let url = cluster().format("mounts");
    let a = TestFs::of_store(&url, "allow_other,attr_timeout=3600");
    let b = TestFs::of_store(&url, "allow_other,attr_timeout=3600");
    (url, a, b)
}

/// Waits up to 5 s for `check` to hold: the other mount's kernel may have cached the old
/// state until the watch's invalidation arrives (milliseconds).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "never seen on the other mount: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_file_closed_on_one_mount_opens_with_that_content_on_the_other() {
    let (url, a, b) = two_mounts();
    fs::create_dir(a.path("photos")).unwrap();
    // statfs reports the Ceph cluster's space (the OSD's memstore), not the local disk's.
    let st = nix::sys::statvfs::statvfs(&a.mnt).unwrap();
    let total = st.blocks() * st.fragment_size();
    assert!(
        total > 0 && total <= 4 << 30,
        "{total} bytes: not the 2 GiB test OSD"
    );
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    fs::write(a.path("photos/big.bin"), &big).unwrap();
    assert!(fs::read(b.path("photos/big.bin")).unwrap() == big);
    // B reads it (into its page cache), A replaces it: B's next open sees the new bytes.
    fs::write(a.path("photos/small.txt"), b"version 1").unwrap();
    assert_eq!(fs::read(b.path("photos/small.txt")).unwrap(), b"version 1");
    fs::write(a.path("photos/small.txt"), b"version 2, longer").unwrap();
    eventually("the second version", || {
        fs::read(b.path("photos/small.txt")).unwrap() == b"version 2, longer"
    });
    // And the other way round, with an xattr (the omap) too.
    fs::write(b.path("photos/from-b"), b"written on b").unwrap();
    xattr_set(&b.path("photos/from-b"), "user.colour", b"blue");
    assert_eq!(fs::read(a.path("photos/from-b")).unwrap(), b"written on b");
    assert_eq!(xattr_get(&a.path("photos/from-b"), "user.colour"), b"blue");
    drop((a, b));
    fsck_clean(&url);
}

#[test]
fn renames_and_unlinks_on_one_mount_are_seen_on_the_other() {
    let (url, a, b) = two_mounts();
    fs::create_dir(a.path("bkt")).unwrap();
    fs::write(a.path("bkt/old"), b"x").unwrap();
    assert!(b.path("bkt/old").exists());
    assert!(
        !b.path("bkt/new").exists(),
        "a negative entry is cached on b now"
    );
    fs::rename(a.path("bkt/old"), a.path("bkt/new")).unwrap();
    eventually("the rename", || {
        !b.path("bkt/old").exists() && b.path("bkt/new").exists()
    });
    fs::remove_file(b.path("bkt/new")).unwrap();
    eventually("the unlink", || !a.path("bkt/new").exists());
    let names = |t: &TestFs| {
        let mut v: Vec<String> = fs::read_dir(t.path("bkt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert!(names(&a).is_empty() && names(&b).is_empty());
    drop((a, b));
    fsck_clean(&url);
}

#[test]
fn racing_exclusive_creates_and_mkdirs_of_one_name_have_one_winner() {
    let (url, a, b) = two_mounts();
    fs::create_dir(a.path("race")).unwrap();
    assert!(b.path("race").exists());
    let run = |t: &TestFs| {
        let root = t.path("race");
        std::thread::spawn(move || {
            let mut won = Vec::new();
            for i in 0..200 {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(root.join(format!("f{i}")));
                let dir = fs::create_dir(root.join(format!("d{i}")));
                for r in [file.map(|_| ()), dir] {
                    match r {
                        Ok(()) => won.push(true),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => won.push(false),
                        Err(e) => panic!("create {i}: {e}"),
                    }
                }
            }
            won
        })
    };
    let (ta, tb) = (run(&a), run(&b));
    let (wa, wb) = (ta.join().unwrap(), tb.join().unwrap());
    for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
        assert!(x ^ y, "name {i}: a won {x}, b won {y}");
    }
    assert_eq!(fs::read_dir(a.path("race")).unwrap().count(), 400);
    drop((a, b));
    fsck_clean(&url);
}

#[test]
fn handler_calls_from_both_mounts_on_one_object_all_count() {
    let (url, a, b) = two_mounts();
    fs::create_dir(a.path("c")).unwrap();
    fs::write(a.path("c/obj"), b"").unwrap();
    a.put_class("counter", common::INCR_CLASS);
    // The class was installed through a; b learns of it from the store's watch.
    eventually("the class", || {
        b.path(".lunafs/classes/counter.lua").exists()
    });
    let run = |t: TestFs| {
        std::thread::spawn(move || {
            for _ in 0..1000 {
                let r = t.call("c/obj", "counter.incr", b"");
                assert_eq!(r.result, 0, "{}", r.message);
            }
            t
        })
    };
    let (ta, tb) = (run(a), run(b));
    let (a, b) = (ta.join().unwrap(), tb.join().unwrap());
    for t in [&a, &b] {
        assert_eq!(xattr_get(&t.path("c/obj"), "user.n"), b"2000");
    }
    drop((a, b));
    fsck_clean(&url);
}

#[test]
fn tar_written_on_one_mount_reads_back_identically_through_the_other() {
    let (url, a, b) = two_mounts();
    let src = tempfile::tempdir().unwrap();
    for d in 0..5 {
        let dir = src.path().join(format!("dir{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..40 {
            let body: Vec<u8> = (0..(f * 997 + d)).map(|i| (i % 256) as u8).collect();
            fs::write(dir.join(format!("f{f}")), body).unwrap();
        }
    }
    fs::create_dir(a.path("t")).unwrap();
    let tar = |args: &[&str]| succeeded(&Command::new("tar").args(args).output().unwrap());
    let archive = src.path().join("../in.tar");
    tar(&[
        "-C",
        src.path().to_str().unwrap(),
        "-cf",
        archive.to_str().unwrap(),
        ".",
    ]);
    tar(&[
        "-C",
        a.path("t").to_str().unwrap(),
        "-xf",
        archive.to_str().unwrap(),
    ]);
    let out = tempfile::tempdir().unwrap();
    let back = out.path().join("back.tar");
    tar(&[
        "-C",
        b.path("t").to_str().unwrap(),
        "-cf",
        back.to_str().unwrap(),
        ".",
    ]);
    let unpacked = out.path().join("u");
    fs::create_dir(&unpacked).unwrap();
    tar(&[
        "-C",
        unpacked.to_str().unwrap(),
        "-xf",
        back.to_str().unwrap(),
    ]);
    let diff = Command::new("diff")
        .arg("-r")
        .arg(src.path())
        .arg(&unpacked)
        .output()
        .unwrap();
    succeeded(&diff);
    let _ = fs::remove_file(archive);
    drop((a, b));
    fsck_clean(&url);
}

#[test]
fn fsck_repair_refuses_a_filesystem_mounted_elsewhere_and_runs_once_it_is_not() {
    let url = cluster().format("busy");
    let mut a = TestFs::of_store(&url, "allow_other");
    let repair = || {
        Command::new(LUNAFS)
            .args(["fsck", &url, "--repair"])
            .output()
            .unwrap()
    };
    let out = repair();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mounted by 1 lunafs process"), "{err}");
    // A clean unmount ends the session at once (its lease is revoked).
    a.unmount();
    let out = repair();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn format_refuses_an_existing_name_and_mount_refuses_an_unknown_one() {
    let c = cluster();
    let url = c.format("refuse");
    let out = Command::new(LUNAFS)
        .args(["format", &url, "--data", &c.rados])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exists"), "{err}");
    let unknown = c.url(&c.fresh_name("never-formatted"));
    let mnt = tempfile::tempdir().unwrap();
    let out = Command::new(LUNAFS)
        .args(["mount", &unknown])
        .arg(mnt.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such filesystem"), "{err}");
    assert!(!common::is_mounted(mnt.path()));
}

#[test]
fn an_unreachable_etcd_or_ceph_is_named_and_nothing_is_mounted() {
    let c = cluster();
    let mnt = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 (discard) of loopback.
    let out = Command::new(LUNAFS)
        .args([
            "mount",
            "etcd://127.0.0.1:9/nothing",
            "-o",
            "backend_timeout=1",
        ])
        .arg(mnt.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd://127.0.0.1:9/nothing"), "{err}");
    assert!(!common::is_mounted(mnt.path()));
    // A reachable etcd whose data URL names a Ceph nobody runs.
    let conf = mnt.path().join("../nowhere.conf");
    fs::write(
        &conf,
        "[global]\nmon host = v2:127.0.0.1:9\nauth client required = none\n",
    )
    .unwrap();
    let name = c.url(&c.fresh_name("no-ceph"));
    let out = Command::new(LUNAFS)
        .args(["format", &name, "-o", "backend_timeout=2", "--data"])
        .arg(format!("rados://lunafs?conf={}", conf.display()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rados://lunafs"), "{err}");
    let _ = fs::remove_file(conf);
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) {
    let out = Command::new("setfattr")
        .args(["-n", name, "-v"])
        .arg(String::from_utf8_lossy(value).as_ref())
        .arg(path)
        .output()
        .unwrap();
    succeeded(&out);
}

fn xattr_get(path: &Path, name: &str) -> Vec<u8> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .unwrap();
    succeeded(&out);
    out.stdout
}

#[test]
fn an_fsynced_write_survives_kill_9_of_its_mount_before_the_close() {
    // SPEC durability on write-back: once fsync returns, the data is in the store, though
    // the file is still open and the mount then dies.
    let (url, mut a, b) = two_mounts();
    fs::create_dir(a.path("d")).unwrap();
    let mut f = fs::File::create(a.path("d/kept")).unwrap();
    f.write_all(b"fsynced before the crash").unwrap();
    f.sync_all().unwrap();
    f.write_all(b", this never").unwrap(); // held, not fsynced: may be lost
    a.kill9();
    drop(f);
    eventually("the fsynced bytes", || {
        fs::read(b.path("d/kept")).is_ok_and(|c| c.starts_with(b"fsynced before the crash"))
    });
    drop(b);
    fsck_clean(&url);
}

/// The small namespace both mounts race over: a bucket, three subdirectories, eight names.
const RACE_DIRS: [&str; 4] = ["r", "r/d0", "r/d1", "r/d2"];

/// One mount's 60 s of random operations (seeded: the seed is printed for a rerun). Races
/// with the other mount give ENOENT, EEXIST, ENOTEMPTY and the like; any other error (EIO,
/// EAGAIN from conflict retries running out) fails the test.
fn random_ops(root: &Path, seed: u64, run_for: Duration) -> u64 {
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let allowed = [
        libc::ENOENT,
        libc::EEXIST,
        libc::ENOTEMPTY,
        libc::ENOTDIR,
        libc::EISDIR,
        libc::ENODATA,
        libc::ESTALE,
    ];
    let start = Instant::now();
    let mut ops = 0;
    while start.elapsed() < run_for {
        let dir = root.join(RACE_DIRS[next(4) as usize]);
        let file = dir.join(format!("f{}", next(8)));
        let other = root
            .join(RACE_DIRS[next(4) as usize])
            .join(format!("f{}", next(8)));
        let op = next(13);
        let body: Vec<u8> = (0..next(20_000)).map(|i| (i + seed) as u8).collect();
        let append = |f: &mut fs::File| f.write_all(&body);
        let patch = |f: &mut fs::File| {
            use std::os::unix::fs::FileExt;
            f.write_all_at(&body[..body.len().min(4096)], next(30_000))
        };
        let r: std::io::Result<()> = match op {
            0 => write_and_close(&file, &body),
            1 => write_then_close(fs::OpenOptions::new().append(true).open(&file), append),
            2 => write_then_close(fs::OpenOptions::new().write(true).open(&file), patch),
            3 => fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .and_then(|f| f.set_len(next(30_000))),
            4 => fs::rename(&file, &other),
            5 => fs::remove_file(&file),
            6 if dir != root.join("r") => fs::create_dir(&dir),
            7 if dir != root.join("r") => fs::remove_dir(&dir),
            8 => xattr::set(
                &file,
                format!("user.k{}", next(4)),
                &body[..body.len().min(64)],
            ),
            9 => xattr::remove(&file, format!("user.k{}", next(4))),
            10 => fs::read(&file).map(drop),
            11 => fs::read_dir(&dir).and_then(|mut d| d.try_for_each(|e| e.map(drop))),
            _ => fs::metadata(&file).map(drop),
        };
        if let Err(e) = r {
            let errno = e.raw_os_error().unwrap_or(0);
            assert!(
                allowed.contains(&errno),
                "op {op} on {} (seed {seed}): {e}",
                file.display()
            );
        }
        ops += 1;
    }
    ops
}

/// Runs `write` on the file just opened, then closes it, failing if close(2) does.
fn write_then_close(
    opened: std::io::Result<fs::File>,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut f = opened?;
    write(&mut f)?;
    common::close(f.into_raw_fd())
}

/// Every path under `root` with its kind, size, content digest and xattrs, sorted. An error
/// (a name the kernel still lists but the store no longer has) means "not settled yet".
fn tree_listing(root: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mut xattrs = Vec::new();
            for name in xattr::list(&path)? {
                let value = xattr::get(&path, &name)?;
                xattrs.push(format!("{}={value:?}", name.to_string_lossy()));
            }
            xattrs.sort();
            if fs::symlink_metadata(&path)?.is_dir() {
                out.push(format!("{rel}/ {xattrs:?}"));
                stack.push(path);
            } else {
                let data = fs::read(&path)?;
                let sum = data.iter().fold(0u64, |h, &b| {
                    h.wrapping_mul(1_099_511_628_211).wrapping_add(b as u64)
                });
                out.push(format!("{rel} {} {sum:x} {xattrs:?}", data.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn sixty_seconds_of_random_operations_on_both_mounts_leave_one_tree_and_a_clean_fsck() {
    let (url, a, b) = two_mounts();
    for d in RACE_DIRS {
        fs::create_dir(a.path(d)).unwrap();
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let run_for = Duration::from_secs(60);
    let (ra, rb) = (a.mnt.clone(), b.mnt.clone());
    let on_a = std::thread::spawn(move || random_ops(&ra, seed, run_for));
    let on_b = std::thread::spawn(move || random_ops(&rb, seed.rotate_left(29), run_for));
    let (na, nb) = (on_a.join().unwrap(), on_b.join().unwrap());
    eprintln!("random operations: {na} on a, {nb} on b (seed {seed})");
    assert!(na > 100 && nb > 100, "both mounts did work: {na}, {nb}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let listings = loop {
        let listings = (tree_listing(&a.path("r")), tree_listing(&b.path("r")));
        let settled = matches!(&listings, (Ok(x), Ok(y)) if x == y);
        if settled || Instant::now() > deadline {
            break listings;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (on_a, on_b) = (listings.0.unwrap(), listings.1.unwrap());
    assert!(!on_a.is_empty(), "the race left something to compare");
    assert_eq!(on_a, on_b, "the mounts list different trees");
    drop((a, b));
    fsck_clean(&url);
}
