//! Handler calls on a temp-dir store, without a kernel: the call transaction's view of the
//! object matches a simple model through random writes and truncates across chunk
//! boundaries, commits whole, and leaves nothing behind on failure.

use lunafs::core::call::{Code, Target};
use lunafs::core::{Core, Ctx, Name, ROOT};
use proptest::prelude::*;

const CTX: Ctx = Ctx {
    uid: 0,
    gid: 0,
    pid: 1,
};

fn n(s: &str) -> Name {
    Name::new(s.as_bytes()).unwrap()
}

fn open() -> (tempfile::TempDir, Core, u64) {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(&dir.path().join("store"), (0, 0)).unwrap();
    let b = core.mkdir(CTX, ROOT, &n("b"), 0o755).unwrap();
    let f = core.create(CTX, b.ino, &n("f"), 0o644).unwrap();
    (dir, core, f.ino)
}

/// Runs ops from the input: `w OFF LEN BYTE`, `t SIZE`, `r` (appends the whole object as
/// the handler sees it, then `|`), `f` (fail at the end). One op per line.
const OPS: &str = r#"
function run(input, output)
  local fail = false
  for line in input:str():gmatch("[^\n]+") do
    local op, a, b, c = line:match("^(%a) ?(%d*) ?(%d*) ?(%d*)$")
    if op == "w" then
      local data = string.rep(string.char(tonumber(c)), tonumber(b))
      objclass.write(tonumber(a), #data, data)
    elseif op == "t" then
      objclass.truncate(tonumber(a))
    elseif op == "r" then
      local size = objclass.stat()
      output:append(objclass.read(0, size))
      output:append("|")
    elseif op == "f" then
      fail = true
    end
  end
  if fail then return -objclass.EIO end
end
objclass.register(run)
"#;

/// A call on `ino` by root, as setfattr would make it (no name).
fn target(ino: u64) -> Target {
    Target {
        ino,
        entry: None,
        path: None,
        uid: 0,
        may_shrink: true,
        may_write: true,
        caller: None,
        cause: None,
    }
}

fn call(core: &Core, ino: u64, input: &[u8]) -> lunafs::lua::Outcome {
    let target = target(ino);
    let code = Code::Inline {
        script: OPS.as_bytes(),
        method: "run",
    };
    core.call(&target, code, input).unwrap().outcome
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, usize, u8),
    Truncate(u64),
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets around the 16 KiB chunk size, so writes and truncates cross boundaries.
    prop_oneof![
        (0u64..70_000, 1usize..40_000, 1u8..255).prop_map(|(o, l, b)| Op::Write(o, l, b)),
        (0u64..90_000).prop_map(Op::Truncate),
        Just(Op::Read),
    ]
}

fn apply(model: &mut Vec<u8>, op: &Op) {
    match *op {
        Op::Write(off, len, byte) => {
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].fill(byte);
        }
        Op::Truncate(size) => model.resize(size as usize, 0),
        Op::Read => {}
    }
}

fn encode(op: &Op) -> String {
    match op {
        Op::Write(o, l, b) => format!("w {o} {l} {b}\n"),
        Op::Truncate(s) => format!("t {s}\n"),
        Op::Read => "r\n".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn a_call_sees_its_own_writes_and_commits_exactly_them(
        before in prop::collection::vec(op(), 0..4),
        during in prop::collection::vec(op(), 1..12),
    ) {
        let (_d, core, ino) = open();
        // State before the call, written through the filesystem path.
        let mut model = Vec::new();
        for op in &before {
            match *op {
                Op::Write(off, len, byte) => {
                    core.write(ino, off, &vec![byte; len]).unwrap();
                }
                Op::Truncate(size) => {
                    let change = lunafs::core::object::SetAttr { size: Some(size), ..Default::default() };
                    core.setattr(ino, &change).unwrap();
                }
                Op::Read => {}
            }
            apply(&mut model, op);
        }
        let input: String = during.iter().map(encode).collect();
        let mut seen = Vec::new();
        let mut expect = model.clone();
        for op in &during {
            apply(&mut expect, op);
            if let Op::Read = op {
                seen.extend_from_slice(&expect);
                seen.push(b'|');
            }
        }
        // A failing call commits nothing.
        let failed = call(&core, ino, format!("{input}f\n").as_bytes());
        prop_assert_eq!(failed.result, -libc::EIO);
        prop_assert_eq!(core.read(ino, 0, u32::MAX).unwrap(), model.clone());
        prop_assert_eq!(core.getattr(ino).unwrap().size, model.len() as u64);

        let done = call(&core, ino, input.as_bytes());
        prop_assert_eq!(done.result, 0, "{:?}", done.message);
        prop_assert!(done.output == seen, "the handler's reads differ from the model");
        prop_assert_eq!(core.getattr(ino).unwrap().size, expect.len() as u64);
        prop_assert!(core.read(ino, 0, u32::MAX).unwrap() == expect, "committed data differs");
    }
}

#[test]
fn a_call_on_a_directory_is_refused() {
    let (_d, core, _) = open();
    let b = core.lookup(ROOT, &n("b")).unwrap();
    let target = target(b.ino);
    let err = core
        .call(
            &target,
            Code::Inline {
                script: OPS.as_bytes(),
                method: "run",
            },
            b"",
        )
        .unwrap_err();
    assert_eq!(err.errno(), libc::EISDIR);
}

#[test]
fn a_class_with_a_syntax_error_is_refused_and_the_old_version_stays() {
    let (_d, core, ino) = open();
    core.class_put(
        "c",
        b"function f(i, o) o:append('one') end objclass.register(f)",
    )
    .unwrap();
    let err = core.class_put("c", b"function f(").unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL);
    assert!(err.to_string().contains('c'), "{err}");
    let target = target(ino);
    let r = core
        .call(
            &target,
            Code::Class {
                class: "c",
                method: "f",
            },
            b"",
        )
        .unwrap();
    assert_eq!(r.outcome.output, b"one");
}
