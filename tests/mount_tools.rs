//! Real tools on a real mount: cp -a, tar with xattrs, rsync -aX, git.

mod common;

use std::fs;
use std::path::Path;

use common::{sh, TestFs};

/// A real source tree to copy: this repository's `src` and `tests`.
fn source_tree() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn cp_a_of_a_source_tree_then_diff_is_clean() {
    let t = TestFs::mount();
    let b = t.bucket("code");
    let src = source_tree();
    sh(&format!(
        "cp -a {}/src {}/tests {}/",
        src.display(),
        src.display(),
        b.display()
    ));
    sh(&format!(
        "diff -r {}/src {}/src",
        src.display(),
        b.display()
    ));
    sh(&format!(
        "diff -r {}/tests {}/tests",
        src.display(),
        b.display()
    ));
}

#[test]
fn tar_round_trip_keeps_contents_modes_times_and_xattrs() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    fs::create_dir_all(w.join("in/sub")).unwrap();
    fs::write(
        w.join("in/sub/a.bin"),
        (0..=255u8).cycle().take(200_000).collect::<Vec<_>>(),
    )
    .unwrap();
    fs::write(w.join("in/b.txt"), b"hello").unwrap();
    sh(&format!(
        "chmod 640 {0}/in/b.txt && ln -s sub/a.bin {0}/in/link && ln {0}/in/b.txt {0}/in/hard",
        w.display()
    ));
    sh(&format!(
        "setfattr -n user.color -v 0x00ff00 {}/in/b.txt",
        w.display()
    ));
    sh(&format!(
        "tar -C {} --xattrs --xattrs-include='user.*' -cf {}/in.tar in",
        w.display(),
        w.display()
    ));
    sh(&format!(
        "tar -C {} --xattrs --xattrs-include='user.*' -xpf {}/in.tar",
        b.display(),
        w.display()
    ));
    sh(&format!("diff -r {}/in {}/in", w.display(), b.display()));
    assert_eq!(
        xattr::get(b.join("in/b.txt"), "user.color")
            .unwrap()
            .unwrap(),
        [0, 0xff, 0]
    );
    // And back out of the mount.
    sh(&format!(
        "tar -C {} --xattrs --xattrs-include='user.*' -cf {}/out.tar in",
        b.display(),
        w.display()
    ));
    fs::create_dir(w.join("back")).unwrap();
    sh(&format!(
        "tar -C {0}/back --xattrs --xattrs-include='user.*' -xpf {0}/out.tar",
        w.display()
    ));
    sh(&format!("diff -r {0}/in {0}/back/in", w.display()));
    let listing = |root: &str| {
        sh(&format!(
            "cd {root} && find in -printf '%p %m %s %T@ %l %n\\n' | sort"
        ))
    };
    assert_eq!(
        listing(&w.display().to_string()),
        listing(&format!("{}/back", w.display()))
    );
    let got = sh(&format!(
        "getfattr -n user.color -e hex {}/back/in/b.txt",
        w.display()
    ));
    assert!(got.contains("user.color=0x00ff00"), "{got}");
}

#[test]
fn rsync_ax_in_and_out_keeps_checksums() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let src = source_tree();
    sh(&format!("cp -a {}/src {}/orig", src.display(), w.display()));
    sh(&format!(
        "setfattr -n user.tag -v blue {}/orig/lib.rs",
        w.display()
    ));
    sh(&format!(
        "rsync -aX {}/orig/ {}/copy/",
        w.display(),
        b.display()
    ));
    sh(&format!(
        "rsync -aX {}/copy/ {}/back/",
        b.display(),
        w.display()
    ));
    let sums = |d: String| {
        sh(&format!(
            "cd {d} && find . -type f -print0 | sort -z | xargs -0 md5sum"
        ))
    };
    let orig = sums(format!("{}/orig", w.display()));
    assert_eq!(orig, sums(format!("{}/copy", b.display())));
    assert_eq!(orig, sums(format!("{}/back", w.display())));
    assert_eq!(
        xattr::get(w.join("back/lib.rs"), "user.tag")
            .unwrap()
            .unwrap(),
        b"blue"
    );
    // A second rsync finds nothing to do, so mtimes and sizes came through exactly.
    let again = sh(&format!(
        "rsync -aXi {}/orig/ {}/copy/",
        w.display(),
        b.display()
    ));
    assert!(again.trim().is_empty(), "rsync saw differences:\n{again}");
}

#[test]
fn git_init_commit_clone_and_fsck_on_the_mount() {
    let t = TestFs::mount();
    let b = t.bucket("repos");
    let env = "GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com";
    let r = b.join("proj");
    sh(&format!("git init -q {}", r.display()));
    sh(&format!(
        "cp -a {}/src {}/",
        source_tree().display(),
        r.display()
    ));
    sh(&format!(
        "cd {} && git add -A && {env} git commit -qm first",
        r.display()
    ));
    fs::write(r.join("src/new.txt"), b"second\n").unwrap();
    sh(&format!(
        "cd {} && git add -A && {env} git commit -qm second && git gc -q",
        r.display()
    ));
    sh(&format!(
        "git clone -q {} {}",
        r.display(),
        b.join("clone").display()
    ));
    sh(&format!(
        "cd {} && git fsck --full --strict",
        b.join("clone").display()
    ));
    sh(&format!("cd {} && git fsck --full --strict", r.display()));
    let log = sh(&format!(
        "cd {} && git log --oneline | wc -l",
        b.join("clone").display()
    ));
    assert_eq!(log.trim(), "2");
    assert_eq!(fs::read(b.join("clone/src/new.txt")).unwrap(), b"second\n");
}
