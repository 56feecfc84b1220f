//! The objclass API, every function, through a real mount: a test class calls each one and
//! the test checks what the handler saw and what the filesystem shows afterwards (data with
//! std::fs, omap and xattrs with getxattr), with binary data that holds NUL bytes.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::{errno_of, TestFs};

const API: &str = r#"
function roundtrip(input, output)
  objclass.write_full(input)
  local size = objclass.stat()
  output:append(objclass.read(0, size))
end

function stat(input, output)
  local size, mtime = objclass.stat()
  output:append(size .. " " .. mtime)
end

function create_excl(input, output) objclass.create(true) end
function create_plain(input, output) objclass.create(false) end

function write_at(input, output)
  objclass.write(3, #input, input)   -- the length must be the bufferlist's, as in Ceph
end

function trunc(input, output) objclass.truncate(tonumber(input:str())) end

function read_past_end(input, output)
  local size = objclass.stat()
  output:append(tostring(#objclass.read(size, 10)) .. " " .. tostring(#objclass.read(0, size + 100)))
end

function xattrs(input, output)
  objclass.setxattr("user.k1", input)
  objclass.setxattr("trusted.t", "tv")
  assert(objclass.getxattr("user.k1") == input)
  assert(objclass.getxattr("k1") == input)           -- a bare name is user.NAME
  local names = {}
  for k, v in pairs(objclass.getxattrs()) do names[#names + 1] = k end
  table.sort(names)
  output:append(table.concat(names, ","))
end

function omap(input, output)
  objclass.map_set_val("a", "1")
  objclass.map_set_vals({ b = "2", c = input })
  local ks = {}
  for k, v in pairs(objclass.map_get_keys("", 10)) do
    assert(v == true)
    ks[#ks + 1] = k
  end
  table.sort(ks)
  local after_a = objclass.map_get_vals("a", "", 10)
  local only_b = objclass.map_get_vals("", "b", 10)
  objclass.map_remove_key("a")
  local ok, err = pcall(objclass.map_get_val, "a")
  output:append(table.concat(ks, ",") .. "|" .. after_a.b:str() .. "|" .. tostring(after_a.a)
    .. "|" .. tostring(only_b.c) .. "," .. only_b.b:str() .. "|" .. tostring(ok) .. " " .. tostring(err) .. "|")
  output:append(objclass.map_get_val("c"))
end

function limited_keys(input, output)
  local n = 0
  for k in pairs(objclass.map_get_keys("", 2)) do n = n + 1 end
  output:append(tostring(n))
end

function clear(input, output) objclass.map_clear() end

function header(input, output)
  assert(#objclass.map_read_header() == 0 or true)
  objclass.map_write_header(input)
  output:append(objclass.map_read_header())
end

function version(input, output) output:append(tostring(objclass.current_version())) end

function remove(input, output) objclass.remove() end

function remove_and_recreate(input, output)
  objclass.remove()
  local ok, errno = pcall(objclass.stat)
  objclass.create(true)
  objclass.write_full("fresh")
  output:append(tostring(ok) .. " " .. tostring(errno))
end

function bl(input, output)
  local a = bufferlist.new()
  a:append("ab")
  a:append(bufferlist.new("c"))
  local b = a .. "d"
  local c = "z" .. a
  output:append(#a .. " " .. a:length() .. " " .. b:str() .. " " .. c:str() .. " "
    .. tostring(a == bufferlist.new("abc")) .. " " .. tostring(a < b) .. " "
    .. tostring(a <= a) .. " " .. tostring(b < a))
end

function log(input, output)
  objclass.log(0, "api-log-marker", input:str())
  cls.log("plain-info-marker")
end

function errnos(input, output)
  output:append(objclass.ENOENT .. " " .. cls.EEXIST .. " " .. objclass.EOPNOTSUPP .. " " .. cls.EIO)
end

for _, f in ipairs({ roundtrip, stat, create_excl, create_plain, write_at, trunc, read_past_end,
  xattrs, omap, limited_keys, clear, header, version, remove, remove_and_recreate, bl, log,
  errnos }) do
  objclass.register(f)
end
"#;

fn setup() -> TestFs {
    let fs = TestFs::mount();
    fs.bucket("b");
    fs.put_class("api", API);
    fs
}

const BINARY: &[u8] = b"bin\0ary\xff\0data\n";

#[test]
fn data_functions_are_binary_safe_and_visible_through_the_mount() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"old contents").unwrap();
    let r = fs.call("b/obj", "api.roundtrip", BINARY);
    assert_eq!(r.result, 0, "{r:?}");
    assert_eq!(r.output, BINARY);
    assert_eq!(fs::read(fs.path("b/obj")).unwrap(), BINARY);

    let r = fs.call("b/obj", "api.stat", b"");
    let text = String::from_utf8(r.output).unwrap();
    let (size, mtime) = text.split_once(' ').unwrap();
    assert_eq!(size, BINARY.len().to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - mtime.parse::<i64>().unwrap()).abs() < 60, "{text}");

    assert_eq!(fs.call("b/obj", "api.write_at", b"XY").result, 0);
    let mut want = BINARY.to_vec();
    want[3..5].copy_from_slice(b"XY");
    assert_eq!(fs::read(fs.path("b/obj")).unwrap(), want);

    assert_eq!(fs.call("b/obj", "api.trunc", b"4").result, 0);
    assert_eq!(fs::read(fs.path("b/obj")).unwrap(), &want[..4]);
    assert_eq!(fs.call("b/obj", "api.trunc", b"100000").result, 0);
    let grown = fs::read(fs.path("b/obj")).unwrap();
    assert_eq!(grown.len(), 100_000);
    assert_eq!(&grown[..4], &want[..4]);
    assert!(grown[4..].iter().all(|&b| b == 0));

    assert_eq!(
        fs.call("b/obj", "api.read_past_end", b"").output,
        b"0 100000"
    );
}

#[test]
fn create_is_exclusive_on_request_and_remove_unlinks_the_object() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    let r = fs.call("b/obj", "api.create_excl", b"");
    assert_eq!(r.result, -libc::EEXIST, "{r:?}");
    assert_eq!(fs.call("b/obj", "api.create_plain", b"").result, 0);

    let r = fs.call("b/obj", "api.remove_and_recreate", b"");
    assert_eq!(r.result, 0, "{r:?}");
    assert_eq!(r.output, format!("false -{}", libc::ENOENT).as_bytes());
    assert_eq!(fs::read(fs.path("b/obj")).unwrap(), b"fresh");

    xattr::set(fs.path("b/obj"), "user.color", b"red").unwrap();
    assert_eq!(fs.call("b/obj", "api.remove", b"").result, 0);
    assert_eq!(errno_of(fs::metadata(fs.path("b/obj"))), libc::ENOENT);
    assert!(fs::read_dir(fs.path("b")).unwrap().next().is_none());

    // With a second name the inode lives on, emptied; the call's name is gone.
    fs::write(fs.path("b/two"), b"data").unwrap();
    fs::hard_link(fs.path("b/two"), fs.path("b/other-name")).unwrap();
    xattr::set(fs.path("b/two"), "user.k", b"v").unwrap();
    assert_eq!(fs.call("b/two", "api.remove", b"").result, 0);
    assert_eq!(errno_of(fs::metadata(fs.path("b/two"))), libc::ENOENT);
    assert_eq!(fs::read(fs.path("b/other-name")).unwrap(), b"");
    assert_eq!(xattr::get(fs.path("b/other-name"), "user.k").unwrap(), None);
    assert_eq!(fs::metadata(fs.path("b/other-name")).unwrap().nlink(), 1);

    // An xattr call does not know the file's name, so it cannot unlink it.
    fs::write(fs.path("b/kept"), b"y").unwrap();
    let e = xattr::set(fs.path("b/kept"), "user.cls.api.remove", b"").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    assert_eq!(fs::read(fs.path("b/kept")).unwrap(), b"y");
}

#[test]
fn xattr_functions_share_the_filesystem_xattrs() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    xattr::set(fs.path("b/obj"), "user.pre", b"p").unwrap();
    let r = fs.call("b/obj", "api.xattrs", BINARY);
    assert_eq!(r.result, 0, "{r:?}");
    // Omap entries under their bare keys, as Ceph scripts name xattrs; other namespaces
    // under their full names.
    assert_eq!(r.output, b"k1,pre,trusted.t");
    assert_eq!(
        xattr::get(fs.path("b/obj"), "user.k1").unwrap().unwrap(),
        BINARY
    );
    assert_eq!(
        xattr::get(fs.path("b/obj"), "trusted.t").unwrap().unwrap(),
        b"tv"
    );
}

#[test]
fn omap_functions_read_write_list_and_remove() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    let r = fs.call("b/obj", "api.omap", BINARY);
    assert_eq!(r.result, 0, "{r:?}");
    let want = [
        format!("a,b,c|2|nil|nil,2|false -{}|", libc::ENOENT).as_bytes(),
        BINARY,
    ]
    .concat();
    assert_eq!(
        String::from_utf8_lossy(&r.output),
        String::from_utf8_lossy(&want)
    );
    // What the handler committed is the object's user.* xattrs.
    let path = fs.path("b/obj");
    assert_eq!(xattr::get(&path, "user.a").unwrap(), None);
    assert_eq!(xattr::get(&path, "user.b").unwrap().unwrap(), b"2");
    assert_eq!(xattr::get(&path, "user.c").unwrap().unwrap(), BINARY);
    assert_eq!(fs.call("b/obj", "api.limited_keys", b"").output, b"2");

    assert_eq!(fs.call("b/obj", "api.clear", b"").result, 0);
    let names: Vec<_> = xattr::list(&path).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn omap_header_is_stored_but_not_an_xattr() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    let r = fs.call("b/obj", "api.header", BINARY);
    assert_eq!(r.output, BINARY, "{r:?}");
    assert_eq!(xattr::list(fs.path("b/obj")).unwrap().count(), 0);
    // It persists: the next call reads it back.
    let again = fs.eval(
        "b/obj",
        "function h(i, o) o:append(objclass.map_read_header()) end objclass.register(h)",
        "h",
        b"",
    );
    assert_eq!(again.output, BINARY);
}

#[test]
fn version_changes_with_every_committed_change() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    let v1: u64 = String::from_utf8(fs.call("b/obj", "api.version", b"").output)
        .unwrap()
        .parse()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    xattr::set(fs.path("b/obj"), "user.x", b"1").unwrap();
    let v2: u64 = String::from_utf8(fs.call("b/obj", "api.version", b"").output)
        .unwrap()
        .parse()
        .unwrap();
    assert!(v2 > v1, "{v1} {v2}");
}

#[test]
fn bufferlists_concatenate_and_compare() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    let r = fs.call("b/obj", "api.bl", b"");
    assert_eq!(
        String::from_utf8(r.output).unwrap(),
        "3 3 abcd zabc true true true false"
    );
}

#[test]
fn log_reaches_the_daemon_log_with_class_method_and_object() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    assert_eq!(fs.call("b/obj", "api.log", b"in").result, 0);
    let log = fs.log();
    let line = log
        .lines()
        .find(|l| l.contains("api-log-marker"))
        .unwrap_or_else(|| panic!("no log line:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("class=\"api\"") || line.contains("class=api"),
        "{line}"
    );
    assert!(
        line.contains("method=\"log\"") || line.contains("method=log"),
        "{line}"
    );
    assert!(line.contains("b/obj"), "{line}");
    assert!(line.contains("api-log-marker in"), "{line}");
    assert!(log.contains("plain-info-marker"));
}

#[test]
fn errno_constants_are_positive() {
    let fs = setup();
    fs::write(fs.path("b/obj"), b"x").unwrap();
    let r = fs.call("b/obj", "api.errnos", b"");
    assert_eq!(
        String::from_utf8(r.output).unwrap(),
        format!(
            "{} {} {} {}",
            libc::ENOENT,
            libc::EEXIST,
            libc::EOPNOTSUPP,
            libc::EIO
        )
    );
}
