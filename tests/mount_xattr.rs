//! Extended attributes through a real mount: `user.*` is the omap, values are binary-safe,
//! and the errnos match what setfattr/getfattr and libc callers expect.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{sh, TestFs};

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

fn getxattr_into(p: &Path, name: &str, buf: &mut [u8]) -> Result<usize, i32> {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer of buf.len() bytes.
    let rc = unsafe {
        libc::getxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if rc >= 0 {
        Ok(rc as usize)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn binary_values_round_trip_and_list() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    let f = b.join("obj");
    fs::write(&f, b"x").unwrap();
    let value: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    xattr::set(&f, "user.bin", &value).unwrap();
    xattr::set(&f, "user.color", b"red").unwrap();
    xattr::set(&f, "trusted.t", b"root only").unwrap();
    assert_eq!(xattr::get(&f, "user.bin").unwrap().unwrap(), value);
    let mut names: Vec<String> = xattr::list(&f)
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["trusted.t", "user.bin", "user.color"]);
    xattr::remove(&f, "user.color").unwrap();
    assert_eq!(xattr::get(&f, "user.color").unwrap(), None);
    // Directories carry an omap too.
    xattr::set(&b, "user.owner", b"team").unwrap();
    assert_eq!(xattr::get(&b, "user.owner").unwrap().unwrap(), b"team");
}

#[test]
fn xattr_errnos() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    let f = b.join("obj");
    fs::write(&f, b"x").unwrap();
    assert_eq!(
        setxattr(&f, "user.k", b"1", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(setxattr(&f, "user.k", b"1", libc::XATTR_CREATE), 0);
    assert_eq!(
        setxattr(&f, "user.k", b"2", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(setxattr(&f, "user.k", b"22", libc::XATTR_REPLACE), 0);
    let both = libc::XATTR_CREATE | libc::XATTR_REPLACE;
    assert_eq!(setxattr(&f, "user.k", b"3", both), libc::EEXIST);
    assert_eq!(setxattr(&f, "user.new", b"3", both), libc::ENODATA);
    let mut small = [0u8; 1];
    assert_eq!(getxattr_into(&f, "user.k", &mut small), Err(libc::ERANGE));
    assert_eq!(getxattr_into(&f, "user.k", &mut []), Ok(2));
    assert_eq!(
        getxattr_into(&f, "user.none", &mut [0u8; 8]),
        Err(libc::ENODATA)
    );
    assert_eq!(
        setxattr(&f, "system.posix_acl_access", b"\x02\0\0\0", 0),
        libc::EOPNOTSUPP
    );
    // The kernel's limit on one value is 64 KiB.
    assert_eq!(setxattr(&f, "user.big", &vec![7u8; 65_536], 0), 0);
    assert_eq!(
        setxattr(&f, "user.huge", &vec![7u8; 65_537], 0),
        libc::E2BIG
    );
    assert_eq!(xattr::get(&f, "user.big").unwrap().unwrap().len(), 65_536);
}

#[test]
fn selinux_label_is_unsupported_until_set_so_ls_asks_once() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    for i in 0..50 {
        fs::write(b.join(format!("f{i}")), b"x").unwrap();
    }
    let f = b.join("f0");
    assert_eq!(
        getxattr_into(&f, "security.selinux", &mut [0u8; 64]),
        Err(libc::EOPNOTSUPP)
    );
    // Other absent names stay ENODATA.
    assert_eq!(
        getxattr_into(&f, "security.capability", &mut [0u8; 64]),
        Err(libc::ENODATA)
    );
    let asked = |t: &TestFs| t.stats()["ops"]["getxattr"].as_u64().unwrap();
    let before = asked(&t);
    let listing = sh(&format!("ls -l {}", b.display()));
    assert_eq!(listing.lines().filter(|l| l.contains(" f")).count(), 50);
    // ls stops asking once one entry answers EOPNOTSUPP (it asked all 50 with ENODATA).
    assert!(
        asked(&t) - before <= 2,
        "ls -l asked {} times",
        asked(&t) - before
    );
    // A label set explicitly is kept and read back.
    assert_eq!(
        setxattr(&f, "security.selinux", b"system_u:object_r:x:s0", 0),
        0
    );
    assert_eq!(
        xattr::get(&f, "security.selinux").unwrap().unwrap(),
        b"system_u:object_r:x:s0"
    );
}

#[test]
fn setfattr_getfattr_round_trip_binary_values() {
    let t = TestFs::mount();
    let b = t.bucket("b");
    let f = b.join("photo.jpg");
    fs::write(&f, b"x").unwrap();
    let p = f.display();
    sh(&format!("setfattr -n user.blob -v 0x00ff10000a {p}"));
    sh(&format!("setfattr -n user.text -v hello {p}"));
    assert_eq!(
        xattr::get(&f, "user.blob").unwrap().unwrap(),
        [0x00, 0xff, 0x10, 0x00, 0x0a]
    );
    let dump = sh(&format!("getfattr -d -e hex {p}"));
    assert!(dump.contains("user.blob=0x00ff10000a"), "{dump}");
    assert!(dump.contains("user.text=0x68656c6c6f"), "{dump}");
    sh(&format!("setfattr -x user.text {p}"));
    let dump = sh(&format!("getfattr -d {p}"));
    assert!(!dump.contains("user.text"), "{dump}");
}
