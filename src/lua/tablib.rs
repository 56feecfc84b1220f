//! The table functions whose C loops can outlast every limit, replaced in each VM's `table`
//! library by Rust versions that check the call's budget as they go: `insert` and `remove`
//! (which shift up to `#t` elements, and `#t` is whatever a `__len` metamethod says),
//! `move` (any index range), `concat` (any range, and an `__index` written in C answers
//! without running a Lua instruction) and `sort` (a merge sort that also terminates with an
//! inconsistent comparator). Semantics and messages are Lua 5.4's; `pack` and `unpack`
//! stay Lua's own (bounded by the stack limit).

use mlua::{Function, Lua, Table, Value};

use super::args::{define, truthy, Args};
use super::budget;

/// Elements moved, compared or joined between budget checks.
const CHECK_EVERY: u32 = 1024;

pub fn install(lua: &Lua, table: &Table) -> mlua::Result<()> {
    define(lua, table, "insert", insert)?;
    define(lua, table, "remove", remove)?;
    define(lua, table, "move", tmove)?;
    define(lua, table, "concat", concat)?;
    // `a < b` as Lua defines it, metamethods included, for values sort cannot order itself.
    let less: Function = lua
        .load("return function(a, b) return a < b end")
        .set_name("=table.sort")
        .eval()?;
    define(lua, table, "sort", move |lua, a| sort(lua, a, &less))
}

/// Counts `n` steps of work against the call's budget.
struct Ticker(u32);

impl Ticker {
    fn tick(&mut self) -> mlua::Result<()> {
        self.0 += 1;
        if self.0 >= CHECK_EVERY {
            self.0 = 0;
            if !budget::keep_going(CHECK_EVERY) {
                return Err(budget::limit_error());
            }
        }
        Ok(())
    }
}

fn len(t: &Table) -> mlua::Result<i64> {
    t.len()
}

/// `table.insert(t, [pos,] v)`.
fn insert(lua: &Lua, a: Args) -> mlua::Result<()> {
    let t = a.table(1)?;
    let end = len(&t)?.wrapping_add(1);
    let (pos, v) = match a.len() {
        2 => (end, a.get(2)),
        3 => {
            let pos = a.int(lua, 2)?;
            if (pos as u64).wrapping_sub(1) >= end as u64 {
                return Err(a.bad(2, "position out of bounds"));
            }
            let mut ticker = Ticker(0);
            let mut i = end;
            while i > pos {
                t.set(i, t.get::<Value>(i - 1)?)?;
                ticker.tick()?;
                i -= 1;
            }
            (pos, a.get(3))
        }
        _ => {
            return Err(mlua::Error::runtime(
                "wrong number of arguments to 'insert'",
            ))
        }
    };
    t.set(pos, v)
}

/// `table.remove(t [, pos])`.
fn remove(lua: &Lua, a: Args) -> mlua::Result<Value> {
    let t = a.table(1)?;
    let size = len(&t)?;
    let mut pos = a.opt_int(lua, 2, size)?;
    if pos != size && (pos as u64).wrapping_sub(1) > size as u64 {
        return Err(a.bad(2, "position out of bounds"));
    }
    let removed = t.get::<Value>(pos)?;
    let mut ticker = Ticker(0);
    while pos < size {
        t.set(pos, t.get::<Value>(pos + 1)?)?;
        ticker.tick()?;
        pos += 1;
    }
    t.set(pos, Value::Nil)?;
    Ok(removed)
}

/// `table.move(a1, f, e, t [, a2])`.
fn tmove(lua: &Lua, a: Args) -> mlua::Result<Table> {
    let (f, e, t) = (a.int(lua, 2)?, a.int(lua, 3)?, a.int(lua, 4)?);
    let src = a.table(1)?;
    let dst = match a.get(5) {
        Value::Nil => src.clone(),
        _ => a.table(5)?,
    };
    if e >= f {
        if !(f > 0 || e < i64::MAX + f) {
            return Err(a.bad(3, "too many elements to move"));
        }
        let n = e - f + 1;
        if t > i64::MAX - n + 1 {
            return Err(a.bad(4, "destination wrap around"));
        }
        let mut ticker = Ticker(0);
        let mut copy = |i: i64| -> mlua::Result<()> {
            dst.set(t + i, src.get::<Value>(f + i)?)?;
            ticker.tick()
        };
        if t > e || t <= f || !src.equals(&dst)? {
            for i in 0..n {
                copy(i)?;
            }
        } else {
            for i in (0..n).rev() {
                copy(i)?;
            }
        }
    }
    Ok(dst)
}

/// `table.concat(t [, sep [, i [, j]]])`.
fn concat(lua: &Lua, a: Args) -> mlua::Result<mlua::LuaString> {
    let t = a.table(1)?;
    let last = len(&t)?;
    let sep = match a.get(2) {
        Value::Nil => lua.create_string("")?,
        _ => a.string(lua, 2)?,
    };
    let mut i = a.opt_int(lua, 3, 1)?;
    let last = a.opt_int(lua, 4, last)?;
    let mut out = budget::Buffer::new();
    let mut ticker = Ticker(0);
    let mut add = |i: i64, out: &mut budget::Buffer| -> mlua::Result<()> {
        let v = t.get::<Value>(i)?;
        let s = match v {
            Value::String(_) | Value::Integer(_) | Value::Number(_) => lua.coerce_string(v)?,
            _ => None,
        }
        .ok_or_else(|| {
            mlua::Error::runtime(format!(
                "invalid value (at index {i}) in table for 'concat'"
            ))
        })?;
        out.extend(lua, &s.as_bytes())?;
        ticker.tick()
    };
    while i < last {
        add(i, &mut out)?;
        out.extend(lua, &sep.as_bytes())?;
        i += 1;
    }
    if i == last {
        add(i, &mut out)?;
    }
    lua.create_string(out.bytes())
}

/// `table.sort(t [, comp])`: a stable merge sort over a copy of `t[1..#t]`.
fn sort(lua: &Lua, a: Args, less: &Function) -> mlua::Result<()> {
    let t = a.table(1)?;
    let n = len(&t)?;
    if n <= 1 {
        return Ok(());
    }
    if n >= i64::from(i32::MAX) {
        return Err(a.bad(1, "array too big"));
    }
    let comp = match a.get(2) {
        Value::Nil => None,
        Value::Function(f) => Some(f),
        _ => return Err(a.bad(2, &format!("function expected, got {}", a.type_of(2)))),
    };
    let n = n as usize;
    // The copy and the merge buffer, held while comparators run more Lua.
    let _copies = budget::Charge::new(lua, n.saturating_mul(2 * std::mem::size_of::<Value>()))?;
    let mut ticker = Ticker(0);
    let mut items = Vec::with_capacity(n);
    for i in 1..=n {
        items.push(t.get::<Value>(i)?);
        ticker.tick()?;
    }
    let mut lt = |x: &Value, y: &Value| -> mlua::Result<bool> {
        ticker.tick()?;
        match (&comp, x, y) {
            (Some(f), _, _) => Ok(truthy(&f.call::<Value>((x.clone(), y.clone()))?)),
            (None, Value::Integer(a), Value::Integer(b)) => Ok(a < b),
            (None, Value::Number(a), Value::Number(b)) => Ok(a < b),
            // Byte order: Lua's strcoll in the C locale this process runs in.
            (None, Value::String(a), Value::String(b)) => Ok(a.as_bytes()[..] < b.as_bytes()[..]),
            (None, _, _) => less.call::<bool>((x.clone(), y.clone())),
        }
    };
    let sorted = merge_sort(items, &mut lt)?;
    for (i, v) in sorted.into_iter().enumerate() {
        t.set(i + 1, v)?;
        ticker.tick()?;
    }
    Ok(())
}

/// Bottom-up merge sort with a comparator that may fail; never panics whatever order the
/// comparator claims.
fn merge_sort<T: Clone, E>(
    mut items: Vec<T>,
    lt: &mut impl FnMut(&T, &T) -> Result<bool, E>,
) -> Result<Vec<T>, E> {
    let n = items.len();
    let mut width = 1;
    let mut buf: Vec<T> = Vec::with_capacity(n);
    while width < n {
        buf.clear();
        let mut start = 0;
        while start < n {
            let mid = (start + width).min(n);
            let end = (start + 2 * width).min(n);
            let (mut i, mut j) = (start, mid);
            while i < mid && j < end {
                // Take from the right only when it is strictly less: stable.
                if lt(&items[j], &items[i])? {
                    buf.push(items[j].clone());
                    j += 1;
                } else {
                    buf.push(items[i].clone());
                    i += 1;
                }
            }
            buf.extend_from_slice(&items[i..mid]);
            buf.extend_from_slice(&items[j..end]);
            start = end;
        }
        std::mem::swap(&mut items, &mut buf);
        width *= 2;
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::merge_sort;

    #[test]
    fn merge_sort_sorts_stably_and_survives_a_lying_comparator() {
        let v = vec![(3, 'a'), (1, 'b'), (3, 'c'), (2, 'd'), (1, 'e')];
        let sorted = merge_sort(v, &mut |a: &(i32, char), b: &(i32, char)| {
            Ok::<_, ()>(a.0 < b.0)
        })
        .unwrap();
        assert_eq!(
            sorted,
            vec![(1, 'b'), (1, 'e'), (2, 'd'), (3, 'a'), (3, 'c')]
        );
        let mut flip = false;
        let lied = merge_sort((0..1000).collect(), &mut |_: &i32, _: &i32| {
            flip = !flip;
            Ok::<_, ()>(flip)
        })
        .unwrap();
        let mut back = lied.clone();
        back.sort();
        assert_eq!(back, (0..1000).collect::<Vec<_>>());
    }
}
