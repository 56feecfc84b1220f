//! The string functions that can run long in C, replaced in each VM's `string` library by
//! Rust versions that keep the call's limits: `find`, `match`, `gmatch`, `gsub` (Lua
//! patterns through `pattern`, checking the budget as they backtrack) and `rep` (whose C
//! version loops forever on `string.rep("", 2^62)` and builds its result before any
//! check). Arguments and results follow Lua 5.4's string library; the other functions
//! (`format`, `sub`, `byte`, ...) stay Lua's own, being linear in memory-bounded input.

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::args::{define, truthy, Args};
use super::budget;
use super::pattern::{self, Cap, Matcher, Stop};

pub fn install(lua: &Lua, string: &Table) -> mlua::Result<()> {
    define(lua, string, "find", |lua, a| find(lua, a, true))?;
    define(lua, string, "match", |lua, a| find(lua, a, false))?;
    define(lua, string, "gmatch", gmatch)?;
    define(lua, string, "gsub", gsub)?;
    define(lua, string, "rep", rep)
}

fn stopped(stop: Stop) -> mlua::Error {
    match stop {
        Stop::Error(message) => mlua::Error::runtime(message),
        Stop::Budget => budget::limit_error(),
    }
}

/// The budget check the matcher hands its steps to.
fn budget() -> impl FnMut(u32) -> bool {
    budget::keep_going
}

fn push_captures(lua: &Lua, src: &[u8], caps: Vec<Cap>) -> mlua::Result<MultiValue> {
    caps.into_iter()
        .map(|c| cap_value(lua, src, c))
        .collect::<mlua::Result<Vec<_>>>()
        .map(MultiValue::from_vec)
}

fn cap_value(lua: &Lua, src: &[u8], cap: Cap) -> mlua::Result<Value> {
    Ok(match cap {
        Cap::Str(a, b) => Value::String(lua.create_string(&src[a..b])?),
        Cap::Pos(p) => Value::Integer(p as i64),
    })
}

fn fail() -> MultiValue {
    MultiValue::from_vec(vec![Value::Nil])
}

/// `string.find(s, p [, init [, plain]])` and `string.match(s, p [, init])`.
fn find(lua: &Lua, a: Args, is_find: bool) -> mlua::Result<MultiValue> {
    let (s, p) = (a.string(lua, 1)?, a.string(lua, 2)?);
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let init = pattern::start_index(a.opt_int(lua, 3, 1)?, src.len());
    if init > src.len() {
        return Ok(fail());
    }
    if is_find && (truthy(&a.get(4)) || pattern::is_plain(&pat)) {
        // Plain text: a linear search, whatever the input.
        return Ok(match memchr::memmem::find(&src[init..], &pat) {
            Some(i) => MultiValue::from_vec(vec![
                Value::Integer((init + i + 1) as i64),
                Value::Integer((init + i + pat.len()) as i64),
            ]),
            None => fail(),
        });
    }
    let (anchor, pat) = match pat.strip_prefix(b"^") {
        Some(rest) => (true, rest),
        None => (false, &pat[..]),
    };
    let mut budget = budget();
    let mut m = Matcher::new(&src, pat, &mut budget);
    let mut s1 = init;
    loop {
        if let Some(e) = m.match_at(s1, 0).map_err(stopped)? {
            if !is_find {
                return push_captures(lua, &src, m.captures(s1, e, true).map_err(stopped)?);
            }
            let caps = m.captures(s1, e, false).map_err(stopped)?;
            let mut out = vec![Value::Integer(s1 as i64 + 1), Value::Integer(e as i64)];
            out.extend(push_captures(lua, &src, caps)?);
            return Ok(MultiValue::from_vec(out));
        }
        s1 += 1;
        if anchor || s1 > src.len() {
            return Ok(fail());
        }
    }
}

/// `string.gmatch(s, p [, init])`: an iterator over the matches (a leading `^` is a plain
/// character here, as in Lua 5.4).
fn gmatch(lua: &Lua, a: Args) -> mlua::Result<Function> {
    let (s, p) = (a.string(lua, 1)?, a.string(lua, 2)?);
    let len = s.as_bytes().len();
    let mut pos = pattern::start_index(a.opt_int(lua, 3, 1)?, len).min(len + 1);
    let mut last: Option<usize> = None;
    lua.create_function_mut(move |lua, ()| {
        let (src, pat) = (s.as_bytes(), p.as_bytes());
        let mut budget = budget();
        let mut m = Matcher::new(&src, &pat, &mut budget);
        let from = pos;
        for start in from..=src.len() {
            match m.match_at(start, 0).map_err(stopped)? {
                Some(e) if Some(e) != last => {
                    pos = e;
                    last = Some(e);
                    return push_captures(lua, &src, m.captures(start, e, true).map_err(stopped)?);
                }
                _ => {}
            }
        }
        pos = src.len() + 1;
        Ok(MultiValue::new())
    })
}

/// `string.gsub(s, p, repl [, n])`.
fn gsub(lua: &Lua, a: Args) -> mlua::Result<(Value, i64)> {
    let (s, p) = (a.string(lua, 1)?, a.string(lua, 2)?);
    let repl = a.get(3);
    if !matches!(
        repl,
        Value::Integer(_)
            | Value::Number(_)
            | Value::String(_)
            | Value::Function(_)
            | Value::Table(_)
    ) {
        return Err(a.bad(
            3,
            &format!("string/function/table expected, got {}", a.type_of(3)),
        ));
    }
    let (src, pat) = (s.as_bytes(), p.as_bytes());
    let max = a.opt_int(lua, 4, src.len() as i64 + 1)?;
    let (anchor, pat) = match pat.strip_prefix(b"^") {
        Some(rest) => (true, rest),
        None => (false, &pat[..]),
    };
    let mut budget = budget();
    let mut m = Matcher::new(&src, pat, &mut budget);
    let (mut out, mut n, mut changed) = (budget::Buffer::new(), 0i64, false);
    let (mut pos, mut last) = (0usize, None);
    while n < max {
        match m.match_at(pos, 0).map_err(stopped)? {
            Some(e) if Some(e) != last => {
                n += 1;
                changed |= replace(lua, &m, &src, (pos, e), &repl, &mut out)?;
                pos = e;
                last = Some(e);
            }
            _ if pos < src.len() => {
                out.extend(lua, &src[pos..pos + 1])?;
                pos += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    if !changed {
        return Ok((Value::String(s.clone()), n));
    }
    out.extend(lua, &src[pos..])?;
    Ok((Value::String(lua.create_string(out.bytes())?), n))
}

/// Appends the replacement of match `s..e`; whether it changed anything (a function or
/// table answering nil or false keeps the match).
fn replace(
    lua: &Lua,
    m: &Matcher<'_>,
    src: &[u8],
    (s, e): (usize, usize),
    repl: &Value,
    out: &mut budget::Buffer,
) -> mlua::Result<bool> {
    let value = match repl {
        Value::Function(f) => {
            let caps = push_captures(lua, src, m.captures(s, e, true).map_err(stopped)?)?;
            f.call::<Value>(caps)?
        }
        Value::Table(t) => {
            let first = m.capture(0, s, e).map_err(stopped)?;
            t.get::<Value>(cap_value(lua, src, first)?)?
        }
        text => {
            let text = lua
                .coerce_string(text.clone())?
                .unwrap_or(lua.create_string("")?);
            expand(lua, m, src, (s, e), &text.as_bytes(), out)?;
            return Ok(true);
        }
    };
    if !truthy(&value) {
        out.extend(lua, &src[s..e])?;
        return Ok(false);
    }
    match lua.coerce_string(value.clone())? {
        Some(text) => out.extend(lua, &text.as_bytes())?,
        None => {
            return Err(mlua::Error::runtime(format!(
                "invalid replacement value (a {})",
                value.type_name()
            )))
        }
    }
    Ok(true)
}

/// A replacement string with `%0`-`%9` and `%%` expanded.
fn expand(
    lua: &Lua,
    m: &Matcher<'_>,
    src: &[u8],
    (s, e): (usize, usize),
    text: &[u8],
    out: &mut budget::Buffer,
) -> mlua::Result<()> {
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'%', &text[i..]) {
        out.extend(lua, &text[i..i + k])?;
        let j = i + k + 1;
        match text.get(j).copied().unwrap_or(0) {
            b'%' => out.extend(lua, b"%")?,
            b'0' => out.extend(lua, &src[s..e])?,
            d @ b'1'..=b'9' => match m.capture((d - b'1') as usize, s, e).map_err(stopped)? {
                Cap::Str(a, b) => out.extend(lua, &src[a..b])?,
                Cap::Pos(p) => out.extend(lua, p.to_string().as_bytes())?,
            },
            _ => {
                return Err(mlua::Error::runtime(
                    "invalid use of '%' in replacement string",
                ))
            }
        }
        i = j + 1;
    }
    out.extend(lua, &text[i..])
}

/// `string.rep(s, n [, sep])`.
fn rep(lua: &Lua, a: Args) -> mlua::Result<mlua::LuaString> {
    let s = a.string(lua, 1)?;
    let n = a.int(lua, 2)?;
    let sep = match a.get(3) {
        Value::Nil => lua.create_string("")?,
        _ => a.string(lua, 3)?,
    };
    let (s, sep) = (s.as_bytes(), sep.as_bytes());
    if n <= 0 || s.len() + sep.len() == 0 {
        return lua.create_string("");
    }
    let n = n as u64;
    let total = (s.len() as u64)
        .checked_mul(n)
        .and_then(|t| t.checked_add((sep.len() as u64).checked_mul(n - 1)?))
        .and_then(|t| usize::try_from(t).ok())
        .ok_or_else(|| mlua::Error::runtime("resulting string too large"))?;
    // The result is built here, then copied onto the Lua heap: both count.
    if !budget::fits(lua, total.saturating_mul(2)) {
        return Err(budget::limit_error());
    }
    let mut out = Vec::with_capacity(total);
    for i in 0..n {
        if i > 0 {
            out.extend_from_slice(&sep);
        }
        out.extend_from_slice(&s);
    }
    lua.create_string(&out)
}
