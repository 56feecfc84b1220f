//! Running lunafs as a service: the systemd unit verifies, READY=1 arrives only once the
//! mount answers, SIGTERM unmounts cleanly, `mount -t fuse.lunafs` works through the helper,
//! `lunafs status` and `/.lunafs/stats` report, and bad configuration mounts nothing.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_mounted, sh, TestFs, LUNAFS};

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/lunafs@.service"
    ))
    .unwrap()
    .replace("/usr/local/bin/lunafs", LUNAFS);
    let path = dir.path().join("lunafs@.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze verify: {text}");
}

#[test]
fn ready_is_sent_once_the_mount_answers_and_sigterm_unmounts_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(LUNAFS)
        .args([
            "mount",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "--foreground",
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no READY=1 from lunafs");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // At READY=1 the mount already answers.
    assert!(is_mounted(&mnt));
    fs::create_dir(mnt.join("b")).unwrap();
    fs::write(mnt.join("b/f"), b"kept").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("no STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt));
    // The store was flushed: it reopens without WAL replay work and keeps the data.
    let wal_bytes: u64 = fs::read_dir(&store)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().ends_with(".log") && e.file_name() != "lunafs.log"
        })
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(
        wal_bytes, 0,
        "the WAL still holds unflushed writes after SIGTERM"
    );
    let mut t = Command::new(LUNAFS)
        .args(["mount", store.to_str().unwrap(), mnt.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(t.success());
    assert_eq!(fs::read(mnt.join("b/f")).unwrap(), b"kept");
    t = Command::new(LUNAFS)
        .args(["umount", mnt.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(t.success());
}

#[test]
fn sigterm_with_a_file_open_detaches_and_the_open_file_finishes_its_writes() {
    let mut t = TestFs::mount();
    let b = t.bucket("b");
    let mut f = fs::File::create(b.join("f")).unwrap();
    f.write_all(b"before ").unwrap();
    t.terminate();
    // The busy mount is detached: new lookups no longer reach lunafs, the open file still does.
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_mounted(&t.path("")) {
        assert!(Instant::now() < deadline, "not detached after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(t.running(), "lunafs exited with a file still open");
    f.write_all(b"after").unwrap();
    f.sync_all().unwrap();
    drop(f);
    // The last close ends the session; the daemon exits cleanly and the store keeps both writes.
    t.unmount_after_detach();
    t.restart();
    assert_eq!(fs::read(t.path("b/f")).unwrap(), b"before after");
}

#[test]
fn mount_t_fuse_lunafs_and_umount_work_from_a_shell() {
    let helper = "/usr/sbin/mount.fuse.lunafs";
    assert!(
        fs::metadata(helper).is_ok(),
        "{helper} is missing: contrib/test.sh installs it (contrib/install.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    sh(&format!(
        "LUNAFS_BIN={LUNAFS} mount -t fuse.lunafs {} {} -o allow_other,nofail,_netdev",
        store.display(),
        mnt.display()
    ));
    assert!(is_mounted(&mnt));
    fs::create_dir(mnt.join("b")).unwrap();
    sh(&format!("umount {}", mnt.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while lunafs::cli::store_locked(&store) {
        assert!(
            Instant::now() < deadline,
            "daemon did not exit after umount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_mounted(&mnt));
}

#[test]
fn status_and_stats_report_counters() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("f"), b"12345").unwrap();
    let _ = fs::metadata(b.join("missing"));
    let stats = fs::read_to_string(t.path(".lunafs/stats")).unwrap();
    assert!(stats.contains("\"mkdir\": 1"), "{stats}");
    assert!(stats.contains("\"bytes_written\": 5"), "{stats}");
    assert!(
        stats.contains(&format!("\"store\": \"{}\"", t.store.display())),
        "{stats}"
    );
    let out = Command::new(LUNAFS)
        .args(["status", t.mnt.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    common::succeeded(&out);
    assert!(
        text.contains(": healthy\n") && text.contains("ops/s"),
        "{text}"
    );
    let out = Command::new(LUNAFS)
        .args(["status", "/tmp"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a lunafs mount"));
}

#[test]
fn bad_config_file_or_option_gives_one_clear_message_and_mounts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let cfg = dir.path().join("bad.toml");
    fs::write(&cfg, "[mount]\nthreads = 0\n").unwrap();
    for args in [
        vec!["--config", cfg.to_str().unwrap()],
        vec!["-o", "attr_timeout=soon"],
        vec!["--config", "/nonexistent/lunafs.toml"],
    ] {
        let out = Command::new(LUNAFS)
            .args([
                "mount",
                dir.path().join("s").to_str().unwrap(),
                mnt.to_str().unwrap(),
            ])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} mounted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("lunafs: "), "{err}");
        assert!(!is_mounted(&mnt));
    }
    fs::write(&cfg, "[mount]\nattr_timeout = 2.0\nread_only = true\n").unwrap();
    let out = Command::new(LUNAFS)
        .args([
            "mount",
            dir.path().join("s").to_str().unwrap(),
            mnt.to_str().unwrap(),
        ])
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    common::succeeded(&out);
    assert_eq!(
        fs::create_dir(mnt.join("x")).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    // -o on the command line wins over the file.
    sh(&format!("{LUNAFS} umount {}", mnt.display()));
    sh(&format!(
        "{LUNAFS} mount {} {} --config {} -o rw",
        dir.path().join("s").display(),
        mnt.display(),
        cfg.display()
    ));
    fs::create_dir(mnt.join("x")).unwrap();
    sh(&format!("{LUNAFS} umount {}", mnt.display()));
}

#[test]
fn mount_after_kill_9_works_on_the_dead_mountpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(LUNAFS)
        .args([
            "mount",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
            "--foreground",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "no mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::create_dir(mnt.join("b")).unwrap();
    fs::write(mnt.join("b/f"), b"before the crash").unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The mountpoint is a dead FUSE mount now (statfs answers ENOTCONN); mounting again
    // must still work, at once.
    assert_eq!(
        nix::sys::statfs::statfs(&mnt).unwrap_err(),
        nix::errno::Errno::ENOTCONN
    );
    sh(&format!(
        "{LUNAFS} mount {} {}",
        store.display(),
        mnt.display()
    ));
    assert_eq!(fs::read(mnt.join("b/f")).unwrap(), b"before the crash");
    sh(&format!("{LUNAFS} umount {}", mnt.display()));
}
