//! Containment on a real mount: limits hold inside library code (patterns, `string.rep`,
//! the table functions), calls never starve the FUSE workers, a call whose caller was
//! killed stops, SIGTERM ends the daemon with calls stuck, and calls by path need only read
//! permission unless they change the object.

mod common;

use std::fs;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{run_as, TestFs, LUNAFS};

/// Handlers that would run for minutes (or forever) inside Lua's C library.
const HOSTILE: &str = r#"
function backtrack(input, output)
  -- 31 bytes; Lua's own matcher took 656 s over this.
  local s = string.rep("a", 30) .. "b"
  output:append(tostring(string.find(s, string.rep("a*", 30) .. "c")))
end
function pattern_from_input(input, output)
  local subject, pattern = input:str():match("^(.-)\n(.*)$")
  output:append(tostring(subject:find(pattern)))
end
function gsub_backtrack(input, output)
  local s = string.rep("a", 30) .. "b"
  s:gsub(string.rep("a*", 30) .. "c", "x")
end
function gmatch_backtrack(input, output)
  local s = string.rep("a", 30) .. "b"
  for m in s:gmatch(string.rep("a*", 30) .. "c") do output:append(m) end
end
function rep_empty(input, output)
  output:append("[" .. string.rep("", 1 << 62) .. "]")
  output:append("[" .. string.rep("", 1 << 62, "") .. "]")
end
function rep_huge(input, output) local s = string.rep("x", 1 << 40) end
function concat_in_c(input, output)
  -- Every t[i] is answered by a C function: no Lua instruction runs in the loop.
  local t = setmetatable({}, { __index = table.concat })
  table.concat(t, "", 1, 1 << 60)
end
function move_far(input, output) table.move({}, 1, 1 << 60, 2) end
function insert_long(input, output)
  local t = setmetatable({}, { __len = function() return 1 << 60 end })
  table.insert(t, 1, "x")
end
function remove_long(input, output)
  local t = setmetatable({}, { __len = function() return 1 << 60 end })
  table.remove(t, 1)
end
function sort_in_c(input, output)
  local t = setmetatable({}, { __len = function() return (1 << 31) - 2 end, __index = rawlen })
  table.sort(t)
end
function sort_lying(input, output)
  local t = {}
  for i = 1, 20000 do t[i] = i end
  local flip = false
  table.sort(t, function(a, b) flip = not flip return flip end)
  output:append(#t)
end
function load_reader_bomb(input, output)
  local s = string.rep("x", 1 << 24)
  load(function() return s end)
end
function nested_gsub(input, output)
  -- Each level holds 8 MiB of output while the next one runs.
  local big = string.rep("x", 8 << 20)
  local function deep(n)
    if n == 0 then return "z" end
    return (big:gsub("x$", function() return deep(n - 1) end))
  end
  deep(100)
end
function unpack_nils(input, output)
  cmsgpack.unpack(string.rep("\192", 30 << 20))
end
function noop(input, output) end
function bump(input, output) objclass.map_set_val("n", "1") end
function look(input, output) output:append(objclass.read(0, 0):str()) end
objclass.register(backtrack)
objclass.register(pattern_from_input)
objclass.register(gsub_backtrack)
objclass.register(gmatch_backtrack)
objclass.register(rep_empty)
objclass.register(rep_huge)
objclass.register(concat_in_c)
objclass.register(move_far)
objclass.register(insert_long)
objclass.register(remove_long)
objclass.register(sort_in_c)
objclass.register(sort_lying)
objclass.register(load_reader_bomb)
objclass.register(nested_gsub)
objclass.register(unpack_nils)
objclass.register(noop)
objclass.register(bump)
objclass.register(look)
"#;

fn mount(options: &str) -> Arc<TestFs> {
    let fs = Arc::new(TestFs::with_options(options));
    fs.bucket("b");
    fs.put_class("hostile", HOSTILE);
    for name in ["obj", "other"] {
        fs::write(fs.path(&format!("b/{name}")), b"data").unwrap();
    }
    fs
}

#[test]
fn library_code_stops_at_the_calls_limits() {
    let fs = mount("allow_other,lua_timeout=2,lua_instructions=100000000000");
    for method in [
        "backtrack",
        "gsub_backtrack",
        "gmatch_backtrack",
        "concat_in_c",
        "move_far",
        "insert_long",
        "remove_long",
    ] {
        let r = fs.call("b/obj", &format!("hostile.{method}"), b"");
        assert_eq!(r.result, -libc::ETIMEDOUT, "{method}: {r:?}");
        assert!(r.message.contains("time limit"), "{method}: {r:?}");
    }
    for method in ["rep_huge", "load_reader_bomb", "nested_gsub"] {
        let r = fs.call("b/obj", &format!("hostile.{method}"), b"");
        assert_eq!(r.result, -libc::ENOMEM, "{method}: {r:?}");
    }
    let r = fs.call("b/obj", "hostile.unpack_nils", b"");
    assert!(r.result < 0, "{r:?}");
    let r = fs.call("b/obj", "hostile.sort_in_c", b"");
    assert_eq!(r.result, -libc::ENOMEM, "a copy of 2^31 elements: {r:?}");
    let r = fs.call("b/obj", "hostile.rep_empty", b"");
    assert_eq!((r.result, r.output.as_slice()), (0, &b"[][]"[..]), "{r:?}");
    let r = fs.call("b/obj", "hostile.sort_lying", b"");
    assert_eq!((r.result, r.output.as_slice()), (0, &b"20000"[..]), "{r:?}");
}

#[test]
fn the_instruction_limit_also_holds_inside_a_pattern() {
    let fs = mount("allow_other,lua_timeout=600,lua_instructions=10000000");
    let r = fs.call("b/obj", "hostile.backtrack", b"");
    assert_eq!(r.result, -libc::ETIMEDOUT, "{r:?}");
    assert!(r.message.contains("instruction limit"), "{r:?}");
}

#[test]
fn sixteen_stuck_calls_leave_every_other_request_answered() {
    let fs = mount("allow_other,lua_timeout=60,lua_instructions=100000000000");
    let input = format!("{}b\n{}c", "a".repeat(30), "a*".repeat(30));
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let fs = fs.clone();
            let input = input.clone();
            // Each on an object of its own, so the calls hold sixteen object locks.
            let key = format!("b/stuck{i}");
            fs::write(fs.path(&key), b"x").unwrap();
            std::thread::spawn(move || {
                fs.call(&key, "hostile.pattern_from_input", input.as_bytes())
            })
        })
        .collect();
    // The calls are queued or running before the rest starts.
    std::thread::sleep(Duration::from_millis(500));
    let listed = fs::read_dir(fs.path("b")).unwrap().count();
    assert_eq!(listed, 18);
    assert_eq!(fs::read(fs.path("b/other")).unwrap(), b"data");
    fs::write(fs.path("b/new"), b"written meanwhile").unwrap();
    assert_eq!(fs::read(fs.path("b/new")).unwrap(), b"written meanwhile");
    xattr::set(fs.path("b/other"), "user.k", b"v").unwrap();
    assert_eq!(
        xattr::get(fs.path("b/other"), "user.k").unwrap().unwrap(),
        b"v"
    );
    // All of that was served while every stuck call was still stuck.
    assert!(calls.iter().all(|c| !c.is_finished()), "a call ended early");
    // End them sooner than their limit: SIGTERM abandons running and queued calls.
    fs.terminate();
    for c in calls {
        let r = c.join().unwrap();
        assert_eq!(r.result, -libc::ECANCELED, "{r:?}");
    }
}

/// `lunafs call` as a child process, so the test can kill it mid-call.
fn call_child(fs: &TestFs, object: &str, method: &str) -> std::process::Child {
    Command::new(LUNAFS)
        .args(["call", fs.path(object).to_str().unwrap(), method])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_call_whose_caller_was_killed_stops_and_commits_nothing() {
    let fs = mount("allow_other,lua_timeout=600,lua_instructions=100000000000");
    let mut child = call_child(&fs, "b/obj", "hostile.backtrack");
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    // The next call on the same object needs its lock: it would wait the full ten
    // minutes behind a call that went on.
    let r = fs.call("b/obj", "hostile.bump", b"");
    assert_eq!(r.result, 0, "{r:?}");
    assert!(fs.log().contains("caller was killed"), "{}", fs.log());
}

#[test]
fn sigterm_ends_the_daemon_while_calls_are_stuck() {
    let mut fs = TestFs::with_options("allow_other,lua_timeout=600,lua_instructions=100000000000");
    fs.bucket("b");
    fs.put_class("hostile", HOSTILE);
    fs::write(fs.path("b/obj"), b"data").unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| call_child(&fs, "b/obj", "hostile.backtrack"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    fs.terminate();
    // Bounded: the helper gives up after a minute, far below the calls' ten-minute limit.
    fs.unmount_after_detach();
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(!status.success(), "an abandoned call is not a success");
    }
    assert!(fs.log().contains("stopping"), "{}", fs.log());
}

#[test]
fn a_reader_may_run_a_call_that_only_reads_but_not_one_that_writes() {
    let fs = mount("allow_other");
    let obj = fs.path("b/obj");
    let path = obj.to_str().unwrap();
    // Readable by everyone, writable by its owner (root) only.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run_as(65534, &[LUNAFS, "call", path, "hostile.look"]);
    common::succeeded(&out);
    assert_eq!(out.stdout, b"data");
    let out = run_as(65534, &[LUNAFS, "call", path, "hostile.bump"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("EACCES"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        xattr::get(&obj, "user.n").unwrap(),
        None,
        "nothing committed"
    );
    // Without read permission, nothing runs at all.
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_as(65534, &[LUNAFS, "call", path, "hostile.noop"]);
    assert!(!out.status.success());
    // The owner may do both.
    let out = Command::new(LUNAFS)
        .args(["call", path, "hostile.bump"])
        .output()
        .unwrap();
    common::succeeded(&out);
    assert_eq!(xattr::get(&obj, "user.n").unwrap().unwrap(), b"1");
}
