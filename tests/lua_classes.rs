//! The shipped classes (md5, thumb), the three ways to call a handler (control file,
//! setfattr, `lunafs call`), class management through `/.lunafs/classes` and `lunafs class`,
//! and packages through `lunafs package` and `require`. Real mount, real tools.

mod common;

use std::fs;
use std::process::Command;

use common::{errno_of, sh, TestFs, LUNAFS};

fn lunafs(fs: &TestFs, args: &[&str]) -> std::process::Output {
    Command::new(LUNAFS)
        .args(args)
        .env("LUNAFS_MOUNT", &fs.mnt)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn md5_class_matches_md5sum_through_all_three_invocation_paths() {
    // An object larger than the call's memory limit: read piece by piece, the budget holds.
    let fs = TestFs::with_options("allow_other,lua_memory=8M");
    fs.bucket("b");
    fs.put_shipped_class("md5");
    let data = pseudo_random(20 * 1024 * 1024 + 12345);
    let path = fs.path("b/blob.bin");
    fs::write(&path, &data).unwrap();
    let md5sum = sh(&format!("md5sum '{}'", path.display()));
    let want = md5sum.split_whitespace().next().unwrap().to_string();

    // (a) the control file
    let r = fs.call("b/blob.bin", "md5.digest", b"");
    assert_eq!(r.result, 0, "{r:?}");
    assert_eq!(String::from_utf8(r.output).unwrap(), want);

    // (b) setfattr runs it; the digest is recorded in the omap, read with getfattr
    xattr::remove(&path, "user.md5").unwrap();
    sh(&format!(
        "setfattr -n user.cls.md5.digest '{}'",
        path.display()
    ));
    let got = sh(&format!(
        "getfattr --only-values -n user.md5 '{}'",
        path.display()
    ));
    assert_eq!(got, want);

    // (c) the CLI prints the output
    let out = lunafs(&fs, &["call", path.to_str().unwrap(), "md5.digest"]);
    assert_eq!(ok(&out), want);
}

#[test]
fn the_cli_reports_a_negative_result_with_its_errno_and_exit_status() {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs::write(fs.path("b/f"), b"x").unwrap();
    let out = lunafs(&fs, &["call", fs.path("b/f").to_str().unwrap(), "nosuch.m"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("-{}", libc::EOPNOTSUPP)), "{err}");
    assert!(err.contains("not installed"), "{err}");

    let out = lunafs(
        &fs,
        &["call", fs.path("b/missing").to_str().unwrap(), "a.b"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("-{}", libc::ENOENT)));
}

#[test]
fn the_cli_passes_binary_input_and_runs_inline_scripts() {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs::write(fs.path("b/f"), b"x").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    fs::write(&input, b"a\0b\xff").unwrap();
    let script = dir.path().join("echo.lua");
    fs::write(
        &script,
        "function echo(i, o) o:append(i) o:append(#i .. '') end objclass.register(echo)",
    )
    .unwrap();
    let out = lunafs(
        &fs,
        &[
            "call",
            fs.path("b/f").to_str().unwrap(),
            "echo",
            "--script",
            script.to_str().unwrap(),
            "--input-file",
            input.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"a\0b\xff4");
}

fn sample_image(w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    }))
}

fn encoded(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

#[test]
fn thumb_class_makes_thumbnails_of_jpeg_and_png_and_records_them_in_the_omap() {
    let fs = TestFs::mount();
    fs.bucket("photos");
    fs.put_shipped_class("thumb");
    for (name, format) in [
        ("cat.jpg", image::ImageFormat::Jpeg),
        ("cat.png", image::ImageFormat::Png),
    ] {
        let original = encoded(&sample_image(800, 600), format);
        let path = fs.path(&format!("photos/{name}"));
        fs::write(&path, &original).unwrap();
        let key = format!("photos/{name}");

        let r = fs.call(&key, "thumb.make", b"200x150");
        assert_eq!(r.result, 0, "{name}: {r:?}");
        // The location, as recorded in the omap and shown by getfattr.
        let loc = sh(&format!(
            "getfattr --only-values -n user.thumb.200x150 '{}'",
            path.display()
        ));
        assert_eq!(loc.as_bytes(), r.output.as_slice());
        let fields: Vec<&str> = loc.split(' ').collect();
        let (offset, len): (usize, usize) =
            (fields[0].parse().unwrap(), fields[1].parse().unwrap());
        assert_eq!(offset, original.len());

        let object = fs::read(&path).unwrap();
        assert_eq!(&object[..original.len()], original.as_slice());
        let thumb = &object[offset..offset + len];
        assert_eq!(image::guess_format(thumb).unwrap(), format);
        let t = image::load_from_memory(thumb).unwrap();
        assert_eq!((t.width(), t.height()), (200, 150), "{name}");
        // The original still decodes as itself.
        let o = image::load_from_memory(&object).unwrap();
        assert_eq!((o.width(), o.height()), (800, 600));

        // get returns the same bytes; a second size keeps the first.
        let got = fs.call(&key, "thumb.get", b"200x150");
        assert_eq!(got.output, thumb);
        // setfattr is the second way in.
        sh(&format!(
            "setfattr -n user.cls.thumb.make -v 64x64 '{}'",
            path.display()
        ));
        let small = fs.call(&key, "thumb.get", b"64x64");
        let s = image::load_from_memory(&small.output).unwrap();
        assert_eq!(
            (s.width(), s.height()),
            (64, 48),
            "{name}: fits inside 64x64"
        );
        assert_eq!(
            image::load_from_memory(&fs.call(&key, "thumb.get", b"200x150").output)
                .unwrap()
                .width(),
            200
        );

        assert_eq!(fs.call(&key, "thumb.strip", b"").result, 0);
        assert_eq!(fs::read(&path).unwrap(), original);
        assert_eq!(fs.call(&key, "thumb.get", b"200x150").result, -libc::ENOENT);
    }
}

#[test]
fn thumb_refuses_what_is_not_an_image_and_changes_nothing() {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs.put_shipped_class("thumb");
    fs::write(fs.path("b/notes.txt"), b"not an image").unwrap();
    let r = fs.call("b/notes.txt", "thumb.make", b"");
    assert_eq!(r.result, -libc::EINVAL, "{r:?}");
    assert_eq!(fs::read(fs.path("b/notes.txt")).unwrap(), b"not an image");
    assert_eq!(xattr::list(fs.path("b/notes.txt")).unwrap().count(), 0);
}

#[test]
fn classes_are_managed_as_files_and_a_syntax_error_fails_the_close() {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs::write(fs.path("b/f"), b"x").unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua/classes/md5.lua");
    sh(&format!(
        "cp '{}' '{}'",
        src.display(),
        fs.path(".lunafs/classes/md5.lua").display()
    ));
    assert_eq!(
        fs::read(fs.path(".lunafs/classes/md5.lua")).unwrap(),
        fs::read(&src).unwrap()
    );
    let listed: Vec<String> = fs::read_dir(fs.path(".lunafs/classes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, ["md5.lua"]);
    assert_eq!(fs.call("b/f", "md5.digest", b"").result, 0);

    // A broken version is refused at close (cp reports it) and the old one stays.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("md5.lua");
    fs::write(&broken, "function digest(").unwrap();
    let out = Command::new("cp")
        .arg(&broken)
        .arg(fs.path(".lunafs/classes/md5.lua"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(fs.call("b/f", "md5.digest", b"").result, 0);
    assert!(fs.log().contains("refused a /.lunafs file"), "{}", fs.log());

    // A new version replaces the old one for the next call.
    fs.put_class(
        "md5",
        "function digest(i, o) o:append('v2') end objclass.register(digest)",
    );
    assert_eq!(fs.call("b/f", "md5.digest", b"").output, b"v2");

    fs::remove_file(fs.path(".lunafs/classes/md5.lua")).unwrap();
    assert_eq!(
        errno_of(fs::metadata(fs.path(".lunafs/classes/md5.lua"))),
        libc::ENOENT
    );
    assert_eq!(fs.call("b/f", "md5.digest", b"").result, -libc::EOPNOTSUPP);
    // Bad names are refused, and so are absurd sizes.
    assert_eq!(
        errno_of(fs::write(fs.path(".lunafs/classes/no-suffix"), b"")),
        libc::EINVAL
    );
    let f = fs::File::create(fs.path(".lunafs/classes/big.lua")).unwrap();
    use std::os::unix::fs::FileExt;
    assert_eq!(errno_of(f.write_at(b"x", 1 << 40)), libc::EFBIG);
    assert_eq!(errno_of(f.set_len(1 << 40)), libc::EFBIG);
}

#[test]
fn classes_survive_a_remount() {
    let mut fs = TestFs::mount();
    fs.bucket("b");
    fs::write(fs.path("b/f"), b"abc").unwrap();
    fs.put_shipped_class("md5");
    fs.remount();
    let r = fs.call("b/f", "md5.digest", b"");
    assert_eq!(
        String::from_utf8(r.output).unwrap(),
        "900150983cd24fb0d6963f7d28e17f72"
    );
}

#[test]
fn the_class_cli_puts_gets_lists_and_removes() {
    let fs = TestFs::mount();
    fs.bucket("b");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua/classes/md5.lua");
    ok(&lunafs(&fs, &["class", "put", src.to_str().unwrap()]));
    ok(&lunafs(
        &fs,
        &["class", "put", src.to_str().unwrap(), "hash"],
    ));
    assert_eq!(ok(&lunafs(&fs, &["class", "ls"])), "hash\nmd5\n");
    assert_eq!(
        ok(&lunafs(&fs, &["class", "get", "hash"])).as_bytes(),
        fs::read(&src).unwrap()
    );
    ok(&lunafs(&fs, &["class", "rm", "hash"]));
    assert_eq!(ok(&lunafs(&fs, &["class", "ls"])), "md5\n");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("bad.lua");
    fs::write(&broken, "function f(\n").unwrap();
    let out = lunafs(&fs, &["class", "put", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.lua"), "{err}");
    let out = lunafs(&fs, &["class", "rm", "nosuch"]);
    assert!(!out.status.success());
}

#[test]
fn packages_install_with_versions_and_load_with_require() {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs::write(fs.path("b/f"), b"x").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("greet1.lua");
    fs::write(&v1, "return { hello = function() return 'v1' end }").unwrap();
    let v2 = dir.path().join("greet2");
    fs::create_dir_all(v2.join("sub")).unwrap();
    fs::write(
        v2.join("init.lua"),
        "local util = require('greet.util') return { hello = function() return 'v2 ' .. util.x end }",
    )
    .unwrap();
    fs::write(v2.join("util.lua"), "return { x = 'util' }").unwrap();
    fs::write(v2.join("sub/deep.lua"), "return 'deep'").unwrap();

    ok(&lunafs(
        &fs,
        &["package", "add", "greet", "1.9", v1.to_str().unwrap()],
    ));
    let user = "function f(i, o) o:append(require('greet').hello()) end objclass.register(f)";
    assert_eq!(fs.eval("b/f", user, "f", b"").output, b"v1");

    // 1.10 is newer than 1.9: require loads it.
    ok(&lunafs(
        &fs,
        &["package", "add", "greet", "1.10", v2.to_str().unwrap()],
    ));
    assert_eq!(fs.eval("b/f", user, "f", b"").output, b"v2 util");
    assert_eq!(
        ok(&lunafs(&fs, &["package", "ls"])),
        "greet.sub.deep@1.10\ngreet.util@1.10\ngreet@1.10\ngreet@1.9\n"
    );

    ok(&lunafs(&fs, &["package", "rm", "greet", "1.10"]));
    assert_eq!(fs.eval("b/f", user, "f", b"").output, b"v1");
    ok(&lunafs(&fs, &["package", "rm", "greet"]));
    let r = fs.eval("b/f", user, "f", b"");
    assert_eq!(r.result, -libc::EIO);
    assert!(r.message.contains("not installed"), "{r:?}");
}

#[test]
fn calls_check_the_callers_access_to_the_object() {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs.put_class(
        "w",
        "function f(i, o) objclass.write_full('mine') end objclass.register(f)",
    );
    fs::write(fs.path("b/private"), b"secret").unwrap();
    let call_as_4242 = |method: &str| {
        let object = fs.path("b/private");
        common::run_as(4242, &[LUNAFS, "call", object.to_str().unwrap(), method])
    };
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(fs.path("b/private"), fs::Permissions::from_mode(0o644)).unwrap();
    // As another user, through the CLI: write permission is required.
    let out = call_as_4242("w.f");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("-{}", libc::EACCES)),
        "{out:?}"
    );
    assert_eq!(fs::read(fs.path("b/private")).unwrap(), b"secret");
    // With write access, a user's handler still may not set trusted.* or security.*
    // xattrs, which the kernel keeps for root.
    fs.put_class(
        "sec",
        "function f(i, o) objclass.setxattr('security.capability', 'x') end objclass.register(f)",
    );
    fs::set_permissions(fs.path("b/private"), fs::Permissions::from_mode(0o666)).unwrap();
    let out = call_as_4242("sec.f");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("-{}", libc::EPERM)),
        "{out:?}"
    );
    assert_eq!(
        xattr::get(fs.path("b/private"), "security.capability").unwrap(),
        None
    );
    fs::set_permissions(fs.path("b/private"), fs::Permissions::from_mode(0o644)).unwrap();
    // And setfattr as that user is refused by the kernel.
    let out = common::run_as(
        4242,
        &[
            "setfattr",
            "-n",
            "user.cls.w.f",
            fs.path("b/private").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(fs::read(fs.path("b/private")).unwrap(), b"secret");
}

#[test]
fn a_handlers_size_change_is_seen_by_readers_with_a_warm_page_cache() {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs.put_class(
        "w",
        "function f(i, o) objclass.write_full(i) end objclass.register(f)",
    );
    let path = fs.path("b/f");
    fs::write(&path, b"old old old").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"old old old"); // in the page cache now

    // Growing, through setfattr.
    xattr::set(&path, "user.cls.w.f", b"new, and longer").unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 15);
    assert_eq!(fs::read(&path).unwrap(), b"new, and longer");
    // Shrinking, by path.
    let r = fs.call("b/f", "w.f", b"short");
    assert_eq!(r.result, 0, "{r:?}");
    assert_eq!(fs::metadata(&path).unwrap().len(), 5);
    assert_eq!(fs::read(&path).unwrap(), b"short");
    // Same size, new bytes.
    assert_eq!(fs.call("b/f", "w.f", b"SHORT").result, 0);
    assert_eq!(fs::read(&path).unwrap(), b"SHORT");
}

#[test]
fn a_setfattr_call_that_would_shrink_the_object_is_refused_and_changes_nothing() {
    // The kernel's writeback cache keeps its own size; a setfattr call could not make it
    // follow a shrink, so the call fails instead (README: Object classes). Asked for: the
    // shared backend's default is without it.
    let fs = TestFs::with_options("allow_other,writeback_cache");
    fs.bucket("b");
    fs.put_class(
        "w",
        "function f(i, o) objclass.write_full(i) end objclass.register(f)",
    );
    let path = fs.path("b/f");
    fs::write(&path, b"long contents").unwrap();
    let e = xattr::set(&path, "user.cls.w.f", b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    assert_eq!(fs::read(&path).unwrap(), b"long contents");
    assert!(fs.log().contains("no_writeback_cache"), "{}", fs.log());
}

#[test]
fn pipelined_control_file_requests_run_in_order_and_answer_in_order() {
    use std::io::{Read, Write};
    let fs = TestFs::mount();
    fs.bucket("b");
    fs.put_class(
        "counter",
        &fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lua/examples/counter.lua"),
        )
        .unwrap(),
    );
    fs::write(fs.path("b/n"), b"").unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fs.path(".lunafs/call"))
        .unwrap();
    // Five requests in two writes (the third split across them), one of them failing.
    let batch = b"exec counter.incr 0 b/n\nexec counter.incr 0 b/n\nexec count".to_vec();
    f.write_all(&batch).unwrap();
    f.write_all(b"er.incr 0 b/n\nexec nosuch.m 0 b/n\nexec counter.incr 0 b/n\n")
        .unwrap();
    let mut responses = Vec::new();
    f.read_to_end(&mut responses).unwrap();
    let mut rest = &responses[..];
    let mut got = Vec::new();
    while !rest.is_empty() {
        let nl = rest.iter().position(|&b| b == b'\n').unwrap();
        let head = std::str::from_utf8(&rest[..nl]).unwrap().to_string();
        let lens: Vec<usize> = head
            .split(' ')
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect();
        let end = nl + 1 + lens[0] + lens[1];
        got.push(common::parse_response(&rest[..end]).unwrap());
        rest = &rest[end..];
    }
    let shown: Vec<(i32, String)> = got
        .iter()
        .map(|c| (c.result, String::from_utf8_lossy(&c.output).into_owned()))
        .collect();
    assert_eq!(
        shown,
        [
            (0, "1".into()),
            (0, "2".into()),
            (0, "3".into()),
            (-libc::EOPNOTSUPP, String::new()),
            (0, "4".into())
        ],
        "{got:?}"
    );
    assert!(got[3].message.contains("not installed"), "{got:?}");
    // The next write starts a new batch on the same open file; a malformed request fails
    // its write with EINVAL and the requests before it in that write are dropped with it.
    let err = f
        .write_all(b"exec counter.incr 0 b/n\nexec counter 0 b/n\n")
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    f.write_all(b"exec counter.incr 0 b/n\n").unwrap();
    let mut resp = Vec::new();
    f.read_to_end(&mut resp).unwrap();
    assert_eq!(common::parse_response(&resp).unwrap().output, b"5");
}
