//! The command line: clear messages and non-zero exits for bad stores, mountpoints and
//! options; background mount and `lunafs umount`.

mod common;

use std::fs;
use std::process::Command;

use common::{is_mounted, TestFs, LUNAFS};

fn lunafs(args: &[&str]) -> (i32, String) {
    let out = Command::new(LUNAFS).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_is_there_for_every_command() {
    for args in [&["--help"][..], &["mount", "--help"], &["umount", "--help"]] {
        let out = Command::new(LUNAFS).args(args).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}

#[test]
fn bad_mountpoint_store_and_options_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let store_s = store.to_str().unwrap();
    let (code, err) = lunafs(&["mount", store_s, d.join("missing").to_str().unwrap(), "-f"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("missing") && err.contains("No such file"),
        "{err}"
    );

    fs::write(d.join("file"), b"").unwrap();
    let (code, err) = lunafs(&["mount", store_s, d.join("file").to_str().unwrap(), "-f"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a directory"), "{err}");

    fs::create_dir(d.join("mnt")).unwrap();
    let mnt = d.join("mnt");
    let (code, err) = lunafs(&["mount", store_s, mnt.to_str().unwrap(), "-f", "-o", "bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("bogus"), "{err}");

    fs::create_dir(d.join("notastore")).unwrap();
    fs::write(d.join("notastore/photo.jpg"), b"x").unwrap();
    let (code, err) = lunafs(&[
        "mount",
        d.join("notastore").to_str().unwrap(),
        mnt.to_str().unwrap(),
        "-f",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("is not a lunafs store"), "{err}");
    assert!(!is_mounted(&mnt));
    assert_eq!(
        fs::read(d.join("notastore/photo.jpg")).unwrap(),
        b"x",
        "a refused store was touched"
    );
}

#[test]
fn busy_mountpoint_and_store_mounted_elsewhere_are_refused() {
    let t = TestFs::mount();
    let other = tempfile::tempdir().unwrap();
    let (code, err) = lunafs(&[
        "mount",
        other.path().join("s").to_str().unwrap(),
        t.mnt.to_str().unwrap(),
        "-f",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("busy"), "{err}");
    let mnt2 = other.path().join("m");
    fs::create_dir(&mnt2).unwrap();
    let (code, err) = lunafs(&[
        "mount",
        t.store.to_str().unwrap(),
        mnt2.to_str().unwrap(),
        "-f",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("in use by another lunafs"), "{err}");
    assert!(!is_mounted(&mnt2));
}

#[test]
fn background_mount_and_umount() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let (code, err) = lunafs(&["mount", store.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(is_mounted(&mnt));
    fs::create_dir(mnt.join("bucket")).unwrap();
    fs::write(mnt.join("bucket/f"), b"bg").unwrap();
    let (code, err) = lunafs(&["umount", mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!is_mounted(&mnt));
    // umount waited for the store to be released: it mounts again at once.
    let (code, err) = lunafs(&["mount", store.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(mnt.join("bucket/f")).unwrap(), b"bg");
    let (code, err) = lunafs(&["umount", mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(fs::read_to_string(store.join("lunafs.log"))
        .unwrap()
        .contains("mounted"));
    let (code, err) = lunafs(&["umount", mnt.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not a lunafs mount"), "{err}");
}

#[test]
fn log_level_and_rust_log_choose_what_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let (s, m) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    // Mounts in the background at `level`, makes one refused request (a debug line), unmounts
    // and returns what this mount wrote to STORE/lunafs.log.
    let session = |level: &str, rust_log: Option<&str>| -> String {
        let _ = fs::remove_file(store.join("lunafs.log"));
        let mut cmd = Command::new(LUNAFS);
        cmd.args(["mount", s, m, "--log-level", level])
            .env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let _ = fs::create_dir(mnt.join("b"));
        assert!(fs::metadata(mnt.join("b/missing")).is_err());
        let (code, err) = lunafs(&["umount", m]);
        assert_eq!(code, 0, "{err}");
        fs::read_to_string(store.join("lunafs.log")).unwrap()
    };
    let warn = session("warn", None);
    assert!(!warn.contains("mounted"), "{warn}");
    let debug = session("debug", None);
    assert!(
        debug.contains("mounted") && debug.contains("request refused"),
        "{debug}"
    );
    let info = session("info", None);
    assert!(
        info.contains("mounted") && !info.contains("request refused"),
        "{info}"
    );
    // RUST_LOG overrides the level.
    let overridden = session("error", Some("lunafs=debug"));
    assert!(overridden.contains("request refused"), "{overridden}");
    let (code, err) = lunafs(&["mount", s, m, "--log-level", "loud"]);
    assert_ne!(code, 0);
    assert!(err.contains("log level"), "{err}");
    assert!(!is_mounted(&mnt));
}
