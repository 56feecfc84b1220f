//! `cmsgpack`: MessagePack for scripts, as the lua-cmsgpack library that Ceph builds into
//! cls_lua's Lua (`cmsgpack.pack(...)`, `cmsgpack.unpack(s)`, `unpack_one(s [, offset])`,
//! `unpack_limit(s, limit [, offset])`), so Ceph classes that serialize with it run here.
//!
//! Encoding follows that library: the smallest integer form; a float that a 32-bit float
//! holds exactly as float 32, else float 64; a number with an integer value as an integer;
//! strings as str8/16/32; a table whose keys are exactly 1..n as an array, any other as a
//! map; nil for functions, userdata and tables nested deeper than 16. Decoding takes every
//! MessagePack type but the ext types ("Bad data format in input.").

use mlua::{Lua, MultiValue, Table, Value};

use super::args::{define, Args};
use super::budget;

/// Tables nested deeper than this are packed as nil (circular references end here).
const MAX_NESTING: usize = 16;

/// Arrays and maps nested deeper than this in input are refused.
const MAX_DECODE_DEPTH: usize = 512;

/// Most values one unpack returns (Lua's stack holds no more).
const MAX_VALUES: usize = 1_000_000;

/// Values packed or unpacked between budget checks.
const CHECK_EVERY: u32 = 1024;

/// Counts work and memory of one pack or unpack against the call's budget.
struct Meter {
    charge: budget::Charge,
    charged: usize,
    steps: u32,
}

impl Meter {
    fn new(lua: &Lua) -> mlua::Result<Meter> {
        Ok(Meter {
            charge: budget::Charge::new(lua, 0)?,
            charged: 0,
            steps: 0,
        })
    }

    /// One more value, `bytes` held in all: charged as it grows (64 KiB at a time).
    fn step(&mut self, lua: &Lua, bytes: usize) -> mlua::Result<()> {
        if bytes > self.charged {
            let more = (bytes - self.charged).max(64 << 10);
            self.charge.grow(lua, more)?;
            self.charged += more;
        }
        self.steps += 1;
        if self.steps >= CHECK_EVERY {
            self.steps = 0;
            if !budget::keep_going(CHECK_EVERY) {
                return Err(budget::limit_error());
            }
        }
        Ok(())
    }
}

pub fn module(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "pack",
        lua.create_function(|lua, a: MultiValue| pack(lua, a))?,
    )?;
    define(lua, &t, "unpack", |lua, a| unpack(lua, &a, None, 0))?;
    define(lua, &t, "unpack_one", |lua, a| {
        let offset = a.opt_int(lua, 2, 0)?;
        unpack(lua, &a, Some(1), offset)
    })?;
    define(lua, &t, "unpack_limit", |lua, a| {
        let (limit, offset) = (a.int(lua, 2)?, a.opt_int(lua, 3, 0)?);
        unpack(lua, &a, Some(limit), offset)
    })?;
    Ok(t)
}

fn pack(lua: &Lua, args: MultiValue) -> mlua::Result<mlua::LuaString> {
    if args.is_empty() {
        return Err(mlua::Error::runtime("MessagePack pack needs input."));
    }
    let mut p = Packer {
        lua,
        out: Vec::new(),
        meter: Meter::new(lua)?,
    };
    for v in args {
        encode(&v, 0, &mut p)?;
    }
    lua.create_string(&p.out)
}

struct Packer<'a> {
    lua: &'a Lua,
    out: Vec<u8>,
    meter: Meter,
}

fn encode(v: &Value, level: usize, p: &mut Packer<'_>) -> mlua::Result<()> {
    p.meter.step(p.lua, p.out.len())?;
    let out = &mut p.out;
    match v {
        Value::Boolean(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Integer(i) => encode_int(*i, out),
        Value::Number(n) => encode_number(*n, out),
        Value::String(s) => encode_str(&s.as_bytes(), out),
        Value::Table(t) if level < MAX_NESTING => encode_table(t, level, p)?,
        _ => out.push(0xc0),
    }
    Ok(())
}

fn encode_int(n: i64, out: &mut Vec<u8>) {
    match n {
        0..=127 => out.push(n as u8),
        128..=0xff => out.extend([0xcc, n as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend((n as u32).to_be_bytes());
        }
        n if n > 0 => {
            out.push(0xcf);
            out.extend((n as u64).to_be_bytes());
        }
        -32..=-1 => out.push(n as i8 as u8),
        -128..=-33 => out.extend([0xd0, n as i8 as u8]),
        -32768..=-129 => {
            out.push(0xd1);
            out.extend((n as i16).to_be_bytes());
        }
        -2_147_483_648..=-32769 => {
            out.push(0xd2);
            out.extend((n as i32).to_be_bytes());
        }
        n => {
            out.push(0xd3);
            out.extend(n.to_be_bytes());
        }
    }
}

fn encode_number(n: f64, out: &mut Vec<u8>) {
    if n.is_finite() && n.trunc() == n && n >= i64::MIN as f64 && n < i64::MAX as f64 {
        return encode_int(n as i64, out);
    }
    let f = n as f32;
    if f as f64 == n || n.is_nan() {
        out.push(0xca);
        out.extend(f.to_be_bytes());
    } else {
        out.push(0xcb);
        out.extend(n.to_be_bytes());
    }
}

fn encode_str(s: &[u8], out: &mut Vec<u8>) {
    let n = s.len();
    match n {
        0..=31 => out.push(0xa0 | n as u8),
        32..=0xff => out.extend([0xd9, n as u8]),
        0x100..=0xffff => {
            out.push(0xda);
            out.extend((n as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend((n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

fn encode_len(n: usize, small: u8, mid: u8, out: &mut Vec<u8>) {
    if n <= 15 {
        out.push(small | n as u8);
    } else if n <= 0xffff {
        out.push(mid);
        out.extend((n as u16).to_be_bytes());
    } else {
        out.push(mid + 1);
        out.extend((n as u32).to_be_bytes());
    }
}

/// Whether `t`'s keys are exactly the integers 1..n.
fn is_array(t: &Table) -> mlua::Result<bool> {
    let (mut count, mut max) = (0i64, 0i64);
    for pair in t.pairs::<Value, Value>() {
        match pair?.0 {
            Value::Integer(i) if i > 0 => {
                max = max.max(i);
                count += 1;
            }
            _ => return Ok(false),
        }
    }
    Ok(max == count)
}

fn encode_table(t: &Table, level: usize, p: &mut Packer<'_>) -> mlua::Result<()> {
    if is_array(t)? {
        let n = t.raw_len();
        encode_len(n, 0x90, 0xdc, &mut p.out);
        for i in 1..=n {
            encode(&t.get::<Value>(i)?, level + 1, p)?;
        }
    } else {
        let pairs = t
            .pairs::<Value, Value>()
            .collect::<mlua::Result<Vec<_>>>()?;
        encode_len(pairs.len(), 0x80, 0xde, &mut p.out);
        for (k, v) in pairs {
            encode(&k, level + 1, p)?;
            encode(&v, level + 1, p)?;
        }
    }
    Ok(())
}

enum Bad {
    Eof,
    Format,
}

impl From<Bad> for mlua::Error {
    fn from(b: Bad) -> Self {
        mlua::Error::runtime(match b {
            Bad::Eof => "Missing bytes in input.",
            Bad::Format => "Bad data format in input.",
        })
    }
}

/// `unpack*`: every value (`limit` None), or at most `limit` with the next offset first
/// (-1 once the input is used up), as lua-cmsgpack returns them.
fn unpack(lua: &Lua, a: &Args, limit: Option<i64>, offset: i64) -> mlua::Result<MultiValue> {
    let s = a.string(lua, 1)?;
    let input = s.as_bytes();
    if offset < 0 || limit.is_some_and(|l| l < 0) {
        return Err(mlua::Error::runtime(format!(
            "Invalid request to unpack with offset of {offset} and limit of {}.",
            input.len()
        )));
    }
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    if start > input.len() {
        return Err(mlua::Error::runtime(format!(
            "Start offset {offset} greater than input length {}.",
            input.len()
        )));
    }
    let limit = match (limit, offset) {
        (Some(0) | None, 0) => None,
        (l, _) => l,
    };
    let mut cur = Cursor {
        lua,
        data: &input,
        pos: start,
        steps: 0,
    };
    let mut values = Vec::new();
    let mut meter = Meter::new(lua)?;
    while cur.pos < input.len() && limit.is_none_or(|l| (values.len() as i64) < l) {
        if values.len() == MAX_VALUES {
            return Err(mlua::Error::runtime("too many values to unpack"));
        }
        meter.step(lua, values.len() * std::mem::size_of::<Value>())?;
        values.push(cur.value(0)?);
    }
    if limit.is_some() {
        let next = if cur.pos == input.len() {
            -1
        } else {
            cur.pos as i64
        };
        values.insert(0, Value::Integer(next));
    }
    Ok(MultiValue::from_vec(values))
}

struct Cursor<'a> {
    lua: &'a Lua,
    data: &'a [u8],
    pos: usize,
    /// Values decoded since the last budget check.
    steps: u32,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Bad> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or(Bad::Eof)?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn uint(&mut self, n: usize) -> Result<u64, Bad> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    fn value(&mut self, depth: usize) -> mlua::Result<Value> {
        if depth > MAX_DECODE_DEPTH {
            return Err(Bad::Format.into());
        }
        self.steps += 1;
        if self.steps >= CHECK_EVERY {
            self.steps = 0;
            if !budget::keep_going(CHECK_EVERY) {
                return Err(budget::limit_error());
            }
        }
        let tag = self.take(1)?[0];
        Ok(match tag {
            0x00..=0x7f => Value::Integer(tag as i64),
            0x80..=0x8f => self.map((tag & 0x0f) as usize, depth)?,
            0x90..=0x9f => self.array((tag & 0x0f) as usize, depth)?,
            0xa0..=0xbf => self.string((tag & 0x1f) as usize)?,
            0xc0 => Value::Nil,
            0xc2 => Value::Boolean(false),
            0xc3 => Value::Boolean(true),
            0xc4 | 0xd9 => self.sized_string(1)?,
            0xc5 | 0xda => self.sized_string(2)?,
            0xc6 | 0xdb => self.sized_string(4)?,
            0xca => Value::Number(f32::from_bits(self.uint(4)? as u32) as f64),
            0xcb => Value::Number(f64::from_bits(self.uint(8)?)),
            0xcc => Value::Integer(self.uint(1)? as i64),
            0xcd => Value::Integer(self.uint(2)? as i64),
            0xce => Value::Integer(self.uint(4)? as i64),
            0xcf => Value::Integer(self.uint(8)? as i64),
            0xd0 => Value::Integer(self.uint(1)? as u8 as i8 as i64),
            0xd1 => Value::Integer(self.uint(2)? as u16 as i16 as i64),
            0xd2 => Value::Integer(self.uint(4)? as u32 as i32 as i64),
            0xd3 => Value::Integer(self.uint(8)? as i64),
            0xdc => {
                let n = self.uint(2)? as usize;
                self.array(n, depth)?
            }
            0xdd => {
                let n = self.uint(4)? as usize;
                self.array(n, depth)?
            }
            0xde => {
                let n = self.uint(2)? as usize;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.uint(4)? as usize;
                self.map(n, depth)?
            }
            0xe0..=0xff => Value::Integer(tag as i8 as i64),
            _ => return Err(Bad::Format.into()),
        })
    }

    fn string(&mut self, n: usize) -> mlua::Result<Value> {
        let lua = self.lua;
        let bytes = self.take(n)?;
        Ok(Value::String(lua.create_string(bytes)?))
    }

    fn sized_string(&mut self, width: usize) -> mlua::Result<Value> {
        let n = self.uint(width)? as usize;
        self.string(n)
    }

    fn array(&mut self, n: usize, depth: usize) -> mlua::Result<Value> {
        // Each element takes at least one byte: a count beyond the input is truncated data.
        if n > self.data.len() - self.pos {
            return Err(Bad::Eof.into());
        }
        let t = self.lua.create_table_with_capacity(n, 0)?;
        for i in 1..=n {
            t.raw_set(i, self.value(depth + 1)?)?;
        }
        Ok(Value::Table(t))
    }

    fn map(&mut self, n: usize, depth: usize) -> mlua::Result<Value> {
        if n > self.data.len() - self.pos {
            return Err(Bad::Eof.into());
        }
        let t = self.lua.create_table_with_capacity(0, n)?;
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            t.raw_set(k, v)?;
        }
        Ok(Value::Table(t))
    }
}
