//! `core` on a temp-dir store, without a kernel: the semantics the FUSE adapter relies on.

use lunafs::core::dir::RenameMode;
use lunafs::core::object::SetAttr;
use lunafs::core::omap::SetMode;
use lunafs::core::{Core, Ctx, Name, ROOT};
use lunafs::Error;

const CTX: Ctx = Ctx {
    uid: 1000,
    gid: 100,
    pid: 1,
};

fn n(s: &str) -> Name {
    Name::new(s.as_bytes()).unwrap()
}

fn open() -> (tempfile::TempDir, Core) {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(&dir.path().join("store"), (0, 0)).unwrap();
    (dir, core)
}

#[test]
fn new_store_has_an_empty_root_owned_by_the_mounter() {
    let (_d, core) = open();
    let root = core.getattr(ROOT).unwrap();
    assert_eq!((root.uid, root.nlink, root.perm), (0, 2, 0o755));
    assert!(core.readdir(ROOT).unwrap().is_empty());
}

#[test]
fn objects_carry_their_bucket_and_renames_may_not_leave_it() {
    let (_d, core) = open();
    let a = core.mkdir(CTX, ROOT, &n("a"), 0o755).unwrap();
    let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
    let sub = core.mkdir(CTX, a.ino, &n("sub"), 0o755).unwrap();
    let f = core.create(CTX, sub.ino, &n("f"), 0o644).unwrap();
    assert_eq!((a.bucket, sub.bucket, f.bucket), (a.ino, a.ino, a.ino));
    let err = core
        .rename(sub.ino, &n("f"), b.ino, &n("f"), RenameMode::Replace)
        .unwrap_err();
    assert!(matches!(err, Error::CrossBucket(_)), "{err}");
    assert!(matches!(
        core.create(CTX, ROOT, &n("x"), 0o644),
        Err(Error::NotPermitted(_))
    ));
    assert!(matches!(
        core.mkdir(CTX, ROOT, &n(".lunafs"), 0o755),
        Err(Error::Exists(_))
    ));
}

#[test]
fn data_round_trips_with_holes_and_truncation() {
    let (_d, core) = open();
    let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
    let f = core.create(CTX, b.ino, &n("f"), 0o644).unwrap();
    core.write(f.ino, 200_000, b"tail").unwrap();
    core.write(f.ino, 10, b"head").unwrap();
    let all = core.read(f.ino, 0, 1 << 20).unwrap();
    assert_eq!(all.len(), 200_004);
    assert_eq!(&all[10..14], b"head");
    assert_eq!(&all[200_000..], b"tail");
    assert!(all[14..200_000].iter().all(|&x| x == 0));
    core.setattr(
        f.ino,
        &SetAttr {
            size: Some(12),
            ..Default::default()
        },
    )
    .unwrap();
    core.setattr(
        f.ino,
        &SetAttr {
            size: Some(100),
            ..Default::default()
        },
    )
    .unwrap();
    let all = core.read(f.ino, 0, 1000).unwrap();
    assert_eq!(&all[10..12], b"he");
    assert!(all[12..].iter().all(|&x| x == 0));
    assert_eq!(core.write(f.ino, 100, b"x").unwrap(), 1);
    assert_eq!(core.getattr(f.ino).unwrap().size, 101);
}

#[test]
fn unlink_while_open_keeps_data_until_close_and_survives_reopen_as_orphan_purge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let ino = {
        let core = Core::open(&path, (0, 0)).unwrap();
        let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
        let f = core.create(CTX, b.ino, &n("f"), 0o644).unwrap();
        core.write(f.ino, 0, b"data").unwrap();
        core.open_file(f.ino).unwrap();
        core.unlink(0, b.ino, &n("f")).unwrap();
        assert_eq!(core.read(f.ino, 0, 10).unwrap(), b"data");
        assert_eq!(core.getattr(f.ino).unwrap().nlink, 0);
        f.ino
        // dropped without close: as if lunafs died
    };
    let core = Core::open(&path, (0, 0)).unwrap();
    assert!(matches!(core.getattr(ino), Err(Error::NotFound(_))));
    assert!(core.read(ino, 0, 10).is_err());
}

#[test]
fn last_close_of_an_unlinked_file_deletes_it() {
    let (_d, core) = open();
    let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
    let f = core.create(CTX, b.ino, &n("f"), 0o644).unwrap();
    core.open_file(f.ino).unwrap();
    core.open_file(f.ino).unwrap();
    core.unlink(0, b.ino, &n("f")).unwrap();
    core.close_file(f.ino).unwrap();
    assert!(core.getattr(f.ino).is_ok());
    core.close_file(f.ino).unwrap();
    assert!(matches!(core.getattr(f.ino), Err(Error::NotFound(_))));
}

#[test]
fn omap_is_the_user_xattr_namespace() {
    let (_d, core) = open();
    let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
    core.setxattr(0, b.ino, b"user.color", b"red", SetMode::Upsert)
        .unwrap();
    core.setxattr(0, b.ino, b"security.selinux", b"ctx", SetMode::Upsert)
        .unwrap();
    assert_eq!(core.getxattr(b.ino, b"user.color").unwrap(), b"red");
    assert_eq!(
        core.listxattr(b.ino).unwrap(),
        b"user.color\0security.selinux\0"
    );
    assert!(matches!(
        core.getxattr(b.ino, b"user.none"),
        Err(Error::NoAttr(_))
    ));
    assert!(matches!(
        core.getxattr(b.ino, b"system.posix_acl_access"),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn rmdir_and_rename_over_directories_keep_link_counts() {
    let (_d, core) = open();
    let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
    let x = core.mkdir(CTX, b.ino, &n("x"), 0o755).unwrap();
    core.mkdir(CTX, b.ino, &n("y"), 0o755).unwrap();
    assert_eq!(core.getattr(b.ino).unwrap().nlink, 4);
    core.rename(b.ino, &n("x"), b.ino, &n("y"), RenameMode::Replace)
        .unwrap();
    assert_eq!(core.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(core.lookup(b.ino, &n("y")).unwrap().ino, x.ino);
    core.rmdir(b.ino, &n("y")).unwrap();
    assert_eq!(core.getattr(b.ino).unwrap().nlink, 2);
    assert!(matches!(core.getattr(x.ino), Err(Error::NotFound(_))));
}

#[test]
fn inode_numbers_are_never_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let (bucket, first) = {
        let core = Core::open(&path, (0, 0)).unwrap();
        let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
        let f = core.create(CTX, b.ino, &n("f"), 0o644).unwrap();
        core.unlink(0, b.ino, &n("f")).unwrap();
        (b.ino, f.ino)
    };
    let core = Core::open(&path, (0, 0)).unwrap();
    let g = core.create(CTX, bucket, &n("g"), 0o644).unwrap();
    assert!(
        g.ino > first,
        "inode {first} was handed out again as {}",
        g.ino
    );
}

#[test]
fn a_store_created_but_never_initialized_opens_as_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    // The database exists (as after a crash right after RocksDB created it) but holds no
    // lunafs records yet.
    drop(lunafs::store::Store::open(&path).unwrap());
    let core = Core::open(&path, (0, 0)).unwrap();
    assert_eq!(core.getattr(ROOT).unwrap().nlink, 2);
}
