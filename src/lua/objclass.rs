//! `objclass` (alias `cls`): the Ceph cls_lua API a handler uses on its one object.
//!
//! Every function here only translates between Lua values and the `Object` trait; the
//! semantics (what a write or an omap change means, when it commits) belong to `core`. A
//! failing storage call raises a `ClsError` carrying its errno: uncaught it ends the handler
//! with the negative errno, `pcall` turns it into `false, -errno, message`. Argument errors
//! are plain errors ("bad argument #1 to 'read' (number expected, got string)"): -EIO
//! uncaught, `false, message` under `pcall`, as in Ceph.
//!
//! Where Ceph's functions take an argument strictly (a bufferlist, a required string),
//! these also accept the obvious other form (a string for a bufferlist, a missing
//! `start_after`): a script written for Ceph passes what Ceph takes and sees Ceph's result.

use std::cell::RefCell;

use mlua::{Function, IntoLuaMulti, Lua, MultiValue, Scope, Table, Value};

use super::args::{truthy, Args};
use super::bufferlist::{bytes_of, Bl};
use super::Object;

/// A storage error as it crosses into Lua: the errno the script sees, the message the
/// call's caller and the log see, and what `pcall` gives the script: Ceph's text (the
/// errno's `strerror`, or a message of its own such as `map_set_vals`').
#[derive(Debug, Clone)]
pub struct ClsError {
    pub errno: i32,
    pub message: String,
    pub script_message: Option<String>,
}

impl ClsError {
    /// The message `pcall` returns, as Ceph's cls_lua words it.
    pub fn for_script(&self) -> String {
        self.script_message
            .clone()
            .unwrap_or_else(|| nix::errno::Errno::from_raw(self.errno).desc().to_string())
    }
}

impl std::fmt::Display for ClsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for ClsError {}

pub fn raise(e: crate::Error) -> mlua::Error {
    mlua::Error::external(ClsError {
        errno: e.errno(),
        message: e.to_string(),
        script_message: None,
    })
}

fn invalid(message: String) -> mlua::Error {
    raise(crate::Error::InvalidArgument(message))
}

/// -EINVAL with Ceph's own wording, which `pcall` passes on.
fn invalid_as_ceph(message: String) -> mlua::Error {
    mlua::Error::external(ClsError {
        errno: libc::EINVAL,
        message: message.clone(),
        script_message: Some(message),
    })
}

/// The errno constants scripts compare results with (positive, as in Ceph): every one
/// Ceph's cls_lua defines, then the ones lunafs's own errors use.
pub const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("ESRCH", libc::ESRCH),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("E2BIG", libc::E2BIG),
    ("ENOEXEC", libc::ENOEXEC),
    ("EBADF", libc::EBADF),
    ("ECHILD", libc::ECHILD),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENODEV", libc::ENODEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ENOTTY", libc::ENOTTY),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("ESPIPE", libc::ESPIPE),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("EPIPE", libc::EPIPE),
    ("EDOM", libc::EDOM),
    ("ERANGE", libc::ERANGE),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ENODATA", libc::ENODATA),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("EBADMSG", libc::EBADMSG),
    ("ENOTSUP", libc::ENOTSUP),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECANCELED", libc::ECANCELED),
    ("ESTALE", libc::ESTALE),
];

/// Who is calling, for `log`.
pub struct Site<'a> {
    pub class: &'a str,
    pub method: &'a str,
    pub object: String,
}

impl Args {
    /// A name, key or data argument: a string, a number or a bufferlist, as bytes.
    fn bytes(&self, i: usize) -> mlua::Result<Vec<u8>> {
        match self.get(i) {
            v @ (Value::String(_) | Value::Integer(_) | Value::Number(_) | Value::UserData(_)) => {
                bytes_of(&v).map_err(|_| self.bad(i, "bufferlist expected"))
            }
            _ => Err(self.bad(i, &format!("string expected, got {}", self.type_of(i)))),
        }
    }

    /// An offset, length or size argument: a non-negative integer.
    fn size(&self, lua: &Lua, i: usize, what: &str) -> mlua::Result<u64> {
        let v = self.int(lua, i)?;
        u64::try_from(v).map_err(|_| invalid(format!("{what} {v}")))
    }

    /// A `max` argument: negative means no limit (Ceph's int passed on as unsigned).
    fn max(&self, lua: &Lua, i: usize) -> mlua::Result<usize> {
        let v = self.opt_int(lua, i, -1)?;
        Ok(usize::try_from(v).unwrap_or(usize::MAX))
    }

    /// A `start_after` or `prefix` argument (empty when absent).
    fn opt_bytes(&self, i: usize) -> mlua::Result<Vec<u8>> {
        match self.get(i) {
            Value::Nil => Ok(Vec::new()),
            _ => self.bytes(i),
        }
    }
}

/// One call's side of the API: the object, who is calling (for `log`), and the functions
/// the script registers as handlers.
pub struct Bound<'a, 'o> {
    pub object: &'a RefCell<&'o mut dyn Object>,
    pub site: &'a Site<'a>,
    pub registered: Table,
}

impl<'a, 'o> Bound<'a, 'o> {
    fn obj(&self) -> std::cell::RefMut<'a, &'o mut dyn Object> {
        self.object.borrow_mut()
    }
}

type Op = fn(&Lua, &Bound<'_, '_>, Args) -> mlua::Result<MultiValue>;

fn out(lua: &Lua, v: impl IntoLuaMulti) -> mlua::Result<MultiValue> {
    v.into_lua_multi(lua)
}

/// Every function of the table, by the name argument errors give it. A VM defines each
/// once, as a Lua function passing its index and arguments to the call's dispatcher, so a
/// call binds one Rust function (`bind`) instead of one per entry.
const OPS: &[(&str, Op)] = &[
    ("objclass.register", |lua, b, a| {
        out(lua, register(&b.registered, a)?)
    }),
    ("objclass.log", |lua, b, a| log(lua, b.site, a)),
    // Ceph: `lua_toboolean`, so no argument (or nil) is a non-exclusive create.
    ("objclass.create", |lua, b, a| {
        out(lua, b.obj().create(truthy(&a.get(1))).map_err(raise)?)
    }),
    ("objclass.remove", |lua, b, _| {
        out(lua, b.obj().remove().map_err(raise)?)
    }),
    ("objclass.stat", |lua, b, _| {
        out(lua, b.obj().stat().map_err(raise)?)
    }),
    ("objclass.read", read),
    ("objclass.write", write),
    ("objclass.write_full", |lua, b, a| {
        out(lua, b.obj().write_full(&a.bytes(1)?).map_err(raise)?)
    }),
    ("objclass.truncate", |lua, b, a| {
        let size = a.size(lua, 1, "size")?;
        out(lua, b.obj().truncate(size).map_err(raise)?)
    }),
    ("objclass.getxattr", |lua, b, a| {
        let v = b.obj().getxattr(&a.bytes(1)?).map_err(raise)?;
        out(lua, Bl::create(lua, v)?)
    }),
    ("objclass.getxattrs", |lua, b, _| {
        let all = b.obj().getxattrs().map_err(raise)?;
        out(lua, bl_table(lua, all)?)
    }),
    ("objclass.setxattr", |lua, b, a| {
        b.obj()
            .setxattr(&a.bytes(1)?, &a.bytes(2)?)
            .map_err(raise)?;
        // Ceph's returns its last argument (the bufferlist).
        out(lua, a.get(a.len().max(1)))
    }),
    ("objclass.map_get_val", |lua, b, a| {
        let v = b.obj().map_get_val(&a.bytes(1)?).map_err(raise)?;
        out(lua, Bl::create(lua, v)?)
    }),
    ("objclass.map_set_val", |lua, b, a| {
        let (k, v) = (a.bytes(1)?, a.bytes(2)?);
        out(lua, b.obj().map_set_val(&k, &v).map_err(raise)?)
    }),
    ("objclass.map_set_vals", |lua, b, a| {
        let pairs = omap_pairs(lua, &a.table(1)?)?;
        let mut o = b.obj();
        for (k, v) in pairs {
            o.map_set_val(&k, &v).map_err(raise)?;
        }
        out(lua, ())
    }),
    ("objclass.map_get_keys", |lua, b, a| {
        let (after, max) = (a.opt_bytes(1)?, a.max(lua, 2)?);
        let entries = b.obj().map_get_vals(&after, b"", max).map_err(raise)?;
        let t = lua.create_table_with_capacity(0, entries.len())?;
        for (k, _) in entries {
            t.raw_set(lua.create_string(&k)?, true)?;
        }
        out(lua, t)
    }),
    ("objclass.map_get_vals", |lua, b, a| {
        let (after, prefix) = (a.opt_bytes(1)?, a.opt_bytes(2)?);
        let max = a.max(lua, 3)?;
        let entries = b.obj().map_get_vals(&after, &prefix, max).map_err(raise)?;
        out(lua, bl_table(lua, entries)?)
    }),
    ("objclass.map_remove_key", |lua, b, a| {
        out(lua, b.obj().map_remove_key(&a.bytes(1)?).map_err(raise)?)
    }),
    ("objclass.map_clear", |lua, b, _| {
        out(lua, b.obj().map_clear().map_err(raise)?)
    }),
    ("objclass.map_read_header", |lua, b, _| {
        let v = b.obj().map_read_header().map_err(raise)?;
        out(lua, Bl::create(lua, v)?)
    }),
    ("objclass.map_write_header", |lua, b, a| {
        out(lua, b.obj().map_write_header(&a.bytes(1)?).map_err(raise)?)
    }),
    ("objclass.current_version", |lua, b, _| {
        out(lua, b.obj().current_version().map_err(raise)?)
    }),
    // A call is the only operation of its "compound op": sub-operation 0.
    ("objclass.current_subop_num", |lua, _, _| out(lua, 0)),
    ("objclass.current_subop_version", |lua, b, _| {
        let v = b.obj().current_version().map_err(raise)?;
        out(lua, format!("{v}.0"))
    }),
];

/// What a VM makes once: the table each call's `objclass` is a copy of (the errno constants
/// and the functions), and the function that points those functions at a call's dispatcher.
pub struct Prepared {
    pub template: Table,
    bind: Function,
}

/// The Lua side of `OPS`: `...` is the template; returns the dispatcher's setter.
fn wrappers_source() -> String {
    let mut src = String::from("local t = ...\nlocal dispatch\n");
    for (i, (name, _)) in OPS.iter().enumerate() {
        let key = name.trim_start_matches("objclass.");
        src.push_str(&format!(
            "t[\"{key}\"] = function(...) return dispatch({i}, ...) end\n"
        ));
    }
    src.push_str("return function(d) dispatch = d end\n");
    src
}

pub fn prepare(lua: &Lua) -> mlua::Result<Prepared> {
    let template = lua.create_table_with_capacity(0, ERRNOS.len() + OPS.len())?;
    for (name, errno) in ERRNOS {
        template.raw_set(*name, *errno)?;
    }
    let bind = lua
        .load(wrappers_source())
        .set_name("=objclass")
        .call(&template)?;
    Ok(Prepared { template, bind })
}

impl Prepared {
    /// Points the functions at `bound` until the scope ends (a function kept past its call
    /// then fails: the scope has destroyed the dispatcher).
    pub fn bind<'scope, 'env: 'scope>(
        &self,
        scope: &'scope Scope<'scope, 'env>,
        bound: &'env Bound<'env, '_>,
    ) -> mlua::Result<()> {
        let dispatch = scope.create_function(move |lua, mut a: MultiValue| {
            let op = a.pop_front().and_then(|v| v.as_usize());
            let Some(&(name, f)) = op.and_then(|i| OPS.get(i)) else {
                return Err(mlua::Error::runtime("objclass: no such function"));
            };
            f(lua, bound, Args::new(a, name))
        })?;
        self.bind.call::<()>(dispatch)
    }
}

fn read(lua: &Lua, b: &Bound<'_, '_>, a: Args) -> mlua::Result<MultiValue> {
    // Ceph reads nothing at a negative offset (it becomes a huge unsigned one).
    if a.int(lua, 1)? < 0 {
        return out(lua, Bl::create(lua, Vec::new())?);
    }
    let (off, len) = (a.size(lua, 1, "offset")?, a.size(lua, 2, "length")?);
    // The bytes the read returns must fit the budget before they are read (a 1 PiB
    // sparse file is a valid object); never a silently short read. A length of 0
    // reads to the end, as Ceph's does.
    let (size, _) = b.obj().stat().map_err(raise)?;
    let rest = size.saturating_sub(off);
    let n = if len == 0 { rest } else { len.min(rest) };
    super::budget::reserve(lua, usize::try_from(n).unwrap_or(usize::MAX))?;
    let data = b.obj().read(off, n).map_err(raise)?;
    out(lua, Bl::create(lua, data)?)
}

fn write(lua: &Lua, b: &Bound<'_, '_>, a: Args) -> mlua::Result<MultiValue> {
    let (off, len) = (a.size(lua, 1, "offset")?, a.size(lua, 2, "length")?);
    let data = a.bytes(3)?;
    // Ceph's OSD refuses an extent whose length is not the data's.
    if len != data.len() as u64 {
        return Err(invalid(format!(
            "write of length {len} with a bufferlist of {} bytes",
            data.len()
        )));
    }
    out(lua, b.obj().write(off, &data).map_err(raise)?)
}

/// A table of names to bufferlists (xattrs, omap entries).
fn bl_table(lua: &Lua, entries: Vec<(Vec<u8>, Vec<u8>)>) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, entries.len())?;
    for (k, v) in entries {
        t.raw_set(lua.create_string(&k)?, Bl::create(lua, v)?)?;
    }
    Ok(t)
}

/// The entries of a `map_set_vals` table, as Ceph takes them: string or number keys (a
/// number as Lua writes it), string values (and bufferlists, a lunafs extra); anything
/// else is -EINVAL and sets nothing.
fn omap_pairs(lua: &Lua, vals: &Table) -> mlua::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut pairs = Vec::new();
    for pair in vals.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let key = match &k {
            Value::String(_) | Value::Integer(_) | Value::Number(_) => {
                lua.coerce_string(k.clone())?
            }
            _ => None,
        };
        let Some(key) = key else {
            return Err(invalid_as_ceph(format!(
                "map_set_vals: invalid key type ({})",
                k.type_name()
            )));
        };
        let key = key.as_bytes().to_vec();
        let value = match &v {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::UserData(ud) if ud.is::<Bl>() => bytes_of(&v)?,
            _ => {
                return Err(invalid_as_ceph(format!(
                    "map_set_vals: invalid val type ({}) for key ({})",
                    v.type_name(),
                    String::from_utf8_lossy(&key)
                )))
            }
        };
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// `register(f)`: `f` becomes callable as a method; twice is an error, as in Ceph.
fn register(registered: &Table, a: Args) -> mlua::Result<()> {
    let Value::Function(f) = a.get(1) else {
        return Err(a.bad(1, &format!("function expected, got {}", a.type_of(1))));
    };
    if registered.contains_key(f.clone())? {
        return Err(mlua::Error::runtime(
            "Cannot register handler more than once",
        ));
    }
    registered.set(f, true)
}

/// `log([level,] ...)`, as Ceph's: with more than one argument, a first argument that is a
/// number (or a numeric string) is the level (cut to an integer), unless negative; the
/// rest are joined with spaces (`true`/`false`, type names for tables, functions,
/// userdata and nil) and the line is returned. Ceph's levels: lower is more important
/// (0 error, 1 warn, up to 5 info, the default; up to 10 debug; above that trace).
fn log(lua: &Lua, site: &Site<'_>, a: Args) -> mlua::Result<MultiValue> {
    // No arguments: nothing logged and no value returned (not even nil).
    if a.is_empty() {
        return Ok(MultiValue::new());
    }
    let mut first = 1;
    let mut level = 5;
    if a.len() > 1 {
        if let Some(n) = lua.coerce_number(a.get(1))? {
            if n.trunc() >= 0.0 {
                level = n.trunc().min(i64::MAX as f64) as i64;
                first = 2;
            }
        }
    }
    let mut parts = Vec::with_capacity(a.len());
    for i in first..=a.len() {
        let v = a.get(i);
        let text = match &v {
            Value::String(_) | Value::Integer(_) | Value::Number(_) => {
                lua.coerce_string(v.clone())?.map(|s| s.as_bytes().to_vec())
            }
            Value::Boolean(b) => Some(b.to_string().into_bytes()),
            _ => None,
        };
        parts.push(text.unwrap_or_else(|| v.type_name().as_bytes().to_vec()));
    }
    let line = parts.join(&b" "[..]);
    let text = String::from_utf8_lossy(&line);
    let (class, method, object) = (site.class, site.method, site.object.as_str());
    match level {
        0 => tracing::error!(class, method, object, "{text}"),
        1 => tracing::warn!(class, method, object, "{text}"),
        2..=5 => tracing::info!(class, method, object, "{text}"),
        6..=10 => tracing::debug!(class, method, object, "{text}"),
        _ => tracing::trace!(class, method, object, "{text}"),
    }
    Ok(MultiValue::from_vec(vec![Value::String(
        lua.create_string(&line)?,
    )]))
}
