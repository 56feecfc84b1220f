//! The namespace through a real mount: buckets at the root, directories, links, renames and
//! the errno every refusal must carry.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{errno_of, run_as, TestFs};

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let a = CString::new(from.as_os_str().as_bytes()).unwrap();
    let b = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated paths; AT_FDCWD.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn buckets_are_directories_at_the_root_and_files_there_are_eperm() {
    let t = TestFs::mount();
    let b = t.bucket("photos");
    assert!(fs::metadata(&b).unwrap().is_dir());
    assert_eq!(errno_of(fs::write(t.path("file.txt"), b"x")), libc::EPERM);
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("photos", t.path("ln"))),
        libc::EPERM
    );
    fs::write(b.join("a"), b"x").unwrap();
    assert_eq!(
        errno_of(fs::hard_link(b.join("a"), t.path("a"))),
        libc::EPERM
    );
    assert_eq!(errno_of(fs::rename(b.join("a"), t.path("a"))), libc::EPERM);
    let names: Vec<_> = fs::read_dir(&t.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["photos"]);
}

#[test]
fn rmdir_of_non_empty_bucket_is_enotempty_and_of_empty_one_works() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("x"), b"1").unwrap();
    assert_eq!(errno_of(fs::remove_dir(&b)), libc::ENOTEMPTY);
    fs::remove_file(b.join("x")).unwrap();
    fs::remove_dir(&b).unwrap();
    assert_eq!(errno_of(fs::metadata(&b)), libc::ENOENT);
}

#[test]
fn control_directory_is_hidden_but_reachable_by_name() {
    let t = TestFs::mount();
    let version = fs::read_to_string(t.path(".lunafs/version")).unwrap();
    assert!(version.starts_with("lunafs "), "{version}");
    assert!(fs::read_dir(&t.mnt).unwrap().next().is_none());
    let inside: Vec<_> = fs::read_dir(t.path(".lunafs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        inside,
        vec![
            "call",
            "classes",
            "global",
            "notifications",
            "notify",
            "packages",
            "stats",
            "topics",
            "version"
        ]
    );
    assert_eq!(errno_of(fs::create_dir(t.path(".lunafs"))), libc::EEXIST);
    assert_eq!(errno_of(fs::write(t.path(".lunafs/x"), b"1")), libc::EPERM);
    assert_eq!(errno_of(fs::remove_dir(t.path(".lunafs"))), libc::EPERM);
    t.bucket("b");
    assert_eq!(
        errno_of(fs::rename(t.path("b"), t.path(".lunafs"))),
        libc::EEXIST
    );
}

#[test]
fn lookup_and_create_errnos() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    assert_eq!(errno_of(fs::metadata(b.join("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::read(b.join("missing/x"))), libc::ENOENT);
    fs::create_dir(b.join("d")).unwrap();
    assert_eq!(errno_of(fs::create_dir(b.join("d"))), libc::EEXIST);
    fs::write(b.join("f"), b"x").unwrap();
    assert_eq!(errno_of(fs::create_dir(b.join("f"))), libc::EEXIST);
    assert_eq!(errno_of(fs::metadata(b.join("f/x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::create_dir(b.join("f/x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_dir(b.join("f"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(b.join("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::write(b.join("d"), b"x")), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_file(b.join("nope"))), libc::ENOENT);
    let long = "n".repeat(256);
    assert_eq!(errno_of(fs::write(b.join(&long), b"x")), libc::ENAMETOOLONG);
    assert_eq!(errno_of(fs::create_dir(b.join(&long))), libc::ENAMETOOLONG);
    let max = "m".repeat(255);
    fs::write(b.join(&max), b"ok").unwrap();
    assert_eq!(fs::read(b.join(&max)).unwrap(), b"ok");
}

#[test]
fn mkdir_p_and_nested_keys_and_dot_entries() {
    let t = TestFs::mount();
    let b = t.bucket("photos");
    fs::create_dir_all(b.join("2024/06/empty")).unwrap();
    fs::write(b.join("2024/cat.jpg"), b"meow").unwrap();
    assert!(fs::metadata(b.join("2024/06/empty")).unwrap().is_dir());
    assert_eq!(fs::read(b.join("2024/06/../cat.jpg")).unwrap(), b"meow");
    // nlink of a directory: 2 + its subdirectories.
    assert_eq!(fs::metadata(b.join("2024")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(b.join("2024/06")).unwrap().nlink(), 3);
    let out = common::sh(&format!("ls -a {}", b.join("2024").display()));
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        [".", "..", "06", "cat.jpg"]
    );
}

#[test]
fn rename_within_a_bucket_replaces_atomically_and_across_buckets_is_exdev() {
    let t = TestFs::mount();
    let a = t.bucket("a");
    let b = t.bucket("b");
    fs::write(a.join("tmp"), b"new").unwrap();
    fs::write(a.join("final"), b"old").unwrap();
    fs::rename(a.join("tmp"), a.join("final")).unwrap();
    assert_eq!(fs::read(a.join("final")).unwrap(), b"new");
    assert_eq!(errno_of(fs::metadata(a.join("tmp"))), libc::ENOENT);
    assert_eq!(
        errno_of(fs::rename(a.join("final"), b.join("final"))),
        libc::EXDEV
    );
    fs::create_dir_all(a.join("d/sub")).unwrap();
    assert_eq!(errno_of(fs::rename(a.join("d"), b.join("d"))), libc::EXDEV);
    // A bucket cannot move into a bucket, a directory cannot become a bucket.
    assert_eq!(errno_of(fs::rename(&b, a.join("b"))), libc::EXDEV);
    assert_eq!(errno_of(fs::rename(a.join("d"), t.path("d"))), libc::EXDEV);
    // Renaming a bucket is fine.
    fs::rename(&b, t.path("b2")).unwrap();
    assert!(t.path("b2").is_dir());
    assert_eq!(
        errno_of(fs::hard_link(a.join("final"), t.path("b2/f"))),
        libc::EXDEV
    );
}

#[test]
fn rename_of_directories_moves_subtrees_and_checks_targets() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::create_dir_all(b.join("src/deep")).unwrap();
    fs::write(b.join("src/deep/f"), b"data").unwrap();
    fs::create_dir(b.join("other")).unwrap();
    fs::rename(b.join("src"), b.join("other/moved")).unwrap();
    assert_eq!(fs::read(b.join("other/moved/deep/f")).unwrap(), b"data");
    assert_eq!(fs::metadata(b.join("other")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 3);
    // `..` of the moved directory is its new parent.
    assert_eq!(
        fs::metadata(b.join("other/moved/..")).unwrap().ino(),
        fs::metadata(b.join("other")).unwrap().ino()
    );
    fs::create_dir(b.join("empty")).unwrap();
    fs::create_dir(b.join("full")).unwrap();
    fs::write(b.join("full/x"), b"").unwrap();
    fs::write(b.join("file"), b"").unwrap();
    assert_eq!(
        errno_of(fs::rename(b.join("other"), b.join("full"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno_of(fs::rename(b.join("other"), b.join("file"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno_of(fs::rename(b.join("file"), b.join("empty"))),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(fs::rename(b.join("other"), b.join("other/moved/x"))),
        libc::EINVAL
    );
    fs::rename(b.join("other"), b.join("empty")).unwrap();
    assert_eq!(fs::read(b.join("empty/moved/deep/f")).unwrap(), b"data");
}

#[test]
fn rename_noreplace_and_exchange() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("x"), b"X").unwrap();
    fs::write(b.join("y"), b"Y").unwrap();
    assert_eq!(
        errno_of(renameat2(
            &b.join("x"),
            &b.join("y"),
            libc::RENAME_NOREPLACE
        )),
        libc::EEXIST
    );
    renameat2(&b.join("x"), &b.join("z"), libc::RENAME_NOREPLACE).unwrap();
    renameat2(&b.join("z"), &b.join("y"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(b.join("y")).unwrap(), b"X");
    assert_eq!(fs::read(b.join("z")).unwrap(), b"Y");
    assert_eq!(
        errno_of(renameat2(
            &b.join("z"),
            &b.join("nope"),
            libc::RENAME_EXCHANGE
        )),
        libc::ENOENT
    );
    fs::create_dir_all(b.join("d/inner")).unwrap();
    fs::create_dir(b.join("e")).unwrap();
    renameat2(&b.join("d/inner"), &b.join("z"), libc::RENAME_EXCHANGE).unwrap();
    assert!(b.join("z").is_dir());
    assert_eq!(fs::read(b.join("d/inner")).unwrap(), b"Y");
    assert_eq!(fs::metadata(b.join("d")).unwrap().nlink(), 2);
}

#[test]
fn hard_links_share_data_and_count_links() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::create_dir(b.join("d")).unwrap();
    fs::write(b.join("f"), b"one").unwrap();
    fs::hard_link(b.join("f"), b.join("d/g")).unwrap();
    assert_eq!(fs::metadata(b.join("f")).unwrap().nlink(), 2);
    fs::write(b.join("d/g"), b"two").unwrap();
    assert_eq!(fs::read(b.join("f")).unwrap(), b"two");
    assert_eq!(
        errno_of(fs::hard_link(b.join("f"), b.join("d/g"))),
        libc::EEXIST
    );
    assert_eq!(
        errno_of(fs::hard_link(b.join("d"), b.join("d2"))),
        libc::EPERM
    );
    fs::remove_file(b.join("f")).unwrap();
    assert_eq!(fs::metadata(b.join("d/g")).unwrap().nlink(), 1);
    assert_eq!(fs::read(b.join("d/g")).unwrap(), b"two");
    // Renaming one name onto another name of the same inode does nothing.
    fs::hard_link(b.join("d/g"), b.join("h")).unwrap();
    fs::rename(b.join("h"), b.join("d/g")).unwrap();
    assert!(b.join("h").exists() && b.join("d/g").exists());
}

#[test]
fn symlinks_and_fifos() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("target"), b"t").unwrap();
    std::os::unix::fs::symlink("target", b.join("ln")).unwrap();
    assert_eq!(fs::read_link(b.join("ln")).unwrap(), Path::new("target"));
    assert_eq!(fs::read(b.join("ln")).unwrap(), b"t");
    assert_eq!(fs::symlink_metadata(b.join("ln")).unwrap().len(), 6);
    std::os::unix::fs::symlink("dangling", b.join("d")).unwrap();
    assert_eq!(errno_of(fs::read(b.join("d"))), libc::ENOENT);
    common::sh(&format!("mkfifo {}", b.join("fifo").display()));
    assert!(fs::metadata(b.join("fifo")).unwrap().file_type().is_fifo());
}

fn mknod(path: &Path, kind: &str, major: u32, minor: u32) -> std::process::Output {
    std::process::Command::new("mknod")
        .arg(path)
        .args([kind, &major.to_string(), &minor.to_string()])
        .output()
        .unwrap()
}

#[test]
fn device_nodes_keep_their_type_and_number_and_open_the_hosts_device() {
    // `dev`: FUSE mounts are nodev unless asked.
    let mut t = TestFs::with_options("allow_other,dev");
    let b = t.bucket("b");
    assert!(mknod(&b.join("null"), "c", 1, 3).status.success());
    assert!(mknod(&b.join("loop"), "b", 7, 200).status.success());
    let null = fs::metadata(b.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.size(), 0);
    let dev = fs::metadata(b.join("loop")).unwrap();
    assert!(dev.file_type().is_block_device());
    assert_eq!(dev.rdev(), libc::makedev(7, 200));
    // Opening it is the kernel's: this one is the host's /dev/null.
    fs::write(b.join("null"), b"swallowed").unwrap();
    assert_eq!(fs::read(b.join("null")).unwrap(), b"");
    // Everything a FIFO takes, a device node takes.
    fs::set_permissions(b.join("null"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(b.join("null"), Some(65534), Some(65534)).unwrap();
    fs::hard_link(b.join("null"), b.join("null2")).unwrap();
    fs::rename(b.join("null2"), b.join("moved")).unwrap();
    let moved = fs::metadata(b.join("moved")).unwrap();
    assert_eq!(
        (moved.nlink(), moved.uid(), moved.mode() & 0o7777),
        (2, 65534, 0o600)
    );
    assert_eq!(moved.rdev(), libc::makedev(1, 3));
    fs::remove_file(b.join("moved")).unwrap();
    assert_eq!(fs::metadata(b.join("null")).unwrap().nlink(), 1);
    // Only root (CAP_MKNOD) makes device nodes; anyone may make a FIFO.
    fs::set_permissions(&b, fs::Permissions::from_mode(0o777)).unwrap();
    let other = b.join("by-nobody");
    let out = run_as(65534, &["mknod", other.to_str().unwrap(), "c", "1", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not permitted"));
    let out = run_as(65534, &["mknod", other.to_str().unwrap(), "p"]);
    common::succeeded(&out);
    // They survive a remount, and the store checks clean.
    t.remount();
    let null = fs::metadata(t.path("b/null")).unwrap();
    assert_eq!((null.rdev(), null.uid()), (libc::makedev(1, 3), 65534));
    t.unmount();
    let out = std::process::Command::new(common::LUNAFS)
        .arg("fsck")
        .arg(&t.store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_nodev_mount_stores_device_nodes_but_does_not_open_them() {
    // nodev is also what a mount without `dev` gets.
    let t = TestFs::with_options("allow_other,nodev");
    let b = t.bucket("b");
    assert!(mknod(&b.join("null"), "c", 1, 3).status.success());
    assert!(fs::metadata(b.join("null"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(errno_of(fs::read(b.join("null"))), libc::EACCES);
}

#[test]
fn permissions_are_enforced_for_other_users() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::set_permissions(&b, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(b.join("private")).unwrap();
    fs::set_permissions(b.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(b.join("private/secret"), b"s").unwrap();
    fs::write(b.join("public"), b"p").unwrap();
    fs::set_permissions(b.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    let nobody = 65534;
    let probe = |path: &Path, mode: &str| {
        let code = "import sys\ntry:\n open(sys.argv[1], sys.argv[2]).close(); print(0)\nexcept OSError as e:\n print(e.errno)";
        let out = run_as(
            nobody,
            &["/usr/bin/python3", "-c", code, path.to_str().unwrap(), mode],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<i32>()
            .unwrap()
    };
    assert_eq!(probe(&b.join("private/secret"), "r"), libc::EACCES);
    assert_eq!(probe(&b.join("public"), "r"), 0);
    assert_eq!(probe(&b.join("public"), "a"), libc::EACCES);
    assert_eq!(probe(&b.join("new"), "w"), libc::EACCES);
    // access(2) answers the same way: R_OK, W_OK, X_OK and F_OK, as nobody and as root.
    let access = |uid: u32, path: &Path, mode: &str| {
        let code = "import os, sys\nprint(os.access(sys.argv[1], eval('os.' + sys.argv[2])))";
        let out = run_as(
            uid,
            &["/usr/bin/python3", "-c", code, path.to_str().unwrap(), mode],
        );
        String::from_utf8_lossy(&out.stdout).trim() == "True"
    };
    assert!(!access(nobody, &b.join("private"), "X_OK"));
    assert!(!access(nobody, &b.join("private/secret"), "F_OK"));
    assert!(access(nobody, &b.join("public"), "R_OK"));
    assert!(!access(nobody, &b.join("public"), "W_OK"));
    assert!(access(0, &b.join("private/secret"), "R_OK | os.W_OK"));
    // Root gets X_OK on a file only if some execute bit is set.
    assert!(!access(0, &b.join("public"), "X_OK"));
    assert!(!access(0, &b.join("missing"), "F_OK"));
    let out = run_as(
        nobody,
        &["chmod", "777", b.join("public").to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not permitted"));
    let out = run_as(
        nobody,
        &["chown", "65534", b.join("public").to_str().unwrap()],
    );
    assert!(!out.status.success());
    // root may chown; the owner may then chmod.
    std::os::unix::fs::chown(b.join("public"), Some(nobody), Some(nobody)).unwrap();
    let out = run_as(
        nobody,
        &["chmod", "600", b.join("public").to_str().unwrap()],
    );
    common::succeeded(&out);
    let meta = fs::metadata(b.join("public")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody, 0o600));
}

#[test]
fn a_time_before_1970_set_without_the_writeback_cache_keeps_its_nanoseconds() {
    // Without the writeback cache stat asks lunafs, which must have stored what was set.
    let t = TestFs::with_options("allow_other,no_writeback_cache");
    let f = t.bucket("b").join("old");
    fs::write(&f, b"x").unwrap();
    common::sh(&format!(
        "touch -m -d '1960-01-02 03:04:05.123456789 UTC' {}",
        f.display()
    ));
    let m = fs::metadata(&f).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (-315_521_755, 123_456_789));
}

#[test]
fn timestamps_follow_posix_rules() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    fs::write(b.join("f"), b"1").unwrap();
    let before = fs::metadata(&b).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(b.join("g"), b"2").unwrap();
    let after = fs::metadata(&b).unwrap();
    assert!(after.mtime_nsec() != before.mtime_nsec() || after.mtime() > before.mtime());
    // utimens sets exact times, including before 1970.
    let f = b.join("f");
    common::sh(&format!(
        "touch -m -d '1960-01-02 03:04:05.123456789 UTC' {}",
        f.display()
    ));
    let m = fs::metadata(&f).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (-315_521_755, 123_456_789));
    // chmod changes ctime, not mtime.
    let c0 = fs::metadata(&f).unwrap().ctime_nsec();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let m2 = fs::metadata(&f).unwrap();
    assert_ne!(m2.ctime_nsec(), c0);
    assert_eq!(m2.mtime(), -315_521_755);
}

#[test]
fn statfs_reports_capacity() {
    let t = TestFs::mount();
    let out = common::sh(&format!("stat -f -c '%b %a %l' {}", t.mnt.display()));
    let nums: Vec<u64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert!(nums[0] > 0 && nums[1] > 0 && nums[1] <= nums[0], "{out}");
    assert_eq!(nums[2], 255);
}

#[test]
fn large_directories_list_every_entry_once() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    for i in 0..3000 {
        fs::write(b.join(format!("file-{i:05}")), b"").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&b)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3000);
    names.dedup();
    assert_eq!(names.len(), 3000);
    assert_eq!(names[1234], "file-01234");
}
