//! `objclass` (alias `cls`): the Ceph cls_lua API a handler uses on its one object.
//!
//! Every function here only translates between Lua values and the `Object` trait; the
//! semantics (what a write or an omap change means, when it commits) belong to `core`. A
//! failing storage call raises a `ClsError` carrying its errno: uncaught it ends the handler
//! with the negative errno, `pcall` turns it into `false, -errno, message`.

use std::cell::RefCell;

use mlua::{Function, Lua, Scope, Table, Value, Variadic};

use super::bufferlist::{bytes_of, Bl};
use super::Object;

/// A storage error as it crosses into Lua: the errno the script sees and the message.
#[derive(Debug, Clone)]
pub struct ClsError {
    pub errno: i32,
    pub message: String,
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
    })
}

/// The errno constants scripts compare results with (positive, as in Ceph).
pub const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("EIO", libc::EIO),
    ("E2BIG", libc::E2BIG),
    ("EBADF", libc::EBADF),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
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

/// A Lua string argument as bytes (keys, names: binary-safe).
fn key(v: &Value) -> mlua::Result<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        other => bytes_of(other),
    }
}

fn size_arg(v: i64, what: &str) -> mlua::Result<u64> {
    u64::try_from(v).map_err(|_| raise(crate::Error::InvalidArgument(format!("{what} {v}"))))
}

/// Builds the `objclass` table of one call, bound to `object` for the call's duration.
/// `registered` collects the functions the script registers as handlers.
pub fn module<'scope, 'env: 'scope, 'o: 'env>(
    lua: &Lua,
    scope: &'scope Scope<'scope, 'env>,
    object: &'env RefCell<&'o mut dyn Object>,
    site: &'env Site<'env>,
    registered: &Table,
) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, errno) in ERRNOS {
        t.set(*name, *errno)?;
    }
    let obj = || object.borrow_mut();
    let set = |name: &str, f: Function| t.set(name, f);

    let reg = registered.clone();
    set(
        "register",
        lua.create_function(move |_, f: Function| reg.set(f, true))?,
    )?;
    set(
        "log",
        scope.create_function(move |_, args: Variadic<Value>| {
            log(site, &args);
            Ok(())
        })?,
    )?;
    set(
        "create",
        scope.create_function(move |_, exclusive: Option<bool>| {
            obj().create(exclusive.unwrap_or(true)).map_err(raise)
        })?,
    )?;
    set(
        "remove",
        scope.create_function(move |_, ()| obj().remove().map_err(raise))?,
    )?;
    set(
        "stat",
        scope.create_function(move |_, ()| obj().stat().map_err(raise))?,
    )?;
    set(
        "read",
        scope.create_function(move |lua, (off, len): (i64, i64)| {
            let (off, len) = (size_arg(off, "offset")?, size_arg(len, "length")?);
            // The bytes the read returns must fit the budget before they are read (a
            // 1 PiB sparse file is a valid object); never a silently short read.
            let (size, _) = obj().stat().map_err(raise)?;
            let n = len.min(size.saturating_sub(off));
            super::sandbox::reserve(lua, usize::try_from(n).unwrap_or(usize::MAX))?;
            let data = obj().read(off, n).map_err(raise)?;
            Bl::create(lua, data)
        })?,
    )?;
    set(
        "write",
        scope.create_function(move |_, (off, len, bl): (i64, i64, Value)| {
            let (off, len) = (size_arg(off, "offset")?, size_arg(len, "length")?);
            let data = bytes_of(&bl)?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > data.len() {
                return Err(raise(crate::Error::InvalidArgument(format!(
                    "write of {len} bytes from a bufferlist of {}",
                    data.len()
                ))));
            }
            obj().write(off, &data[..len]).map_err(raise)
        })?,
    )?;
    set(
        "write_full",
        scope.create_function(move |_, bl: Value| {
            obj().write_full(&bytes_of(&bl)?).map_err(raise)
        })?,
    )?;
    set(
        "truncate",
        scope.create_function(move |_, size: i64| {
            obj().truncate(size_arg(size, "size")?).map_err(raise)
        })?,
    )?;
    set(
        "getxattr",
        scope.create_function(move |lua, name: Value| {
            let v = obj().getxattr(&key(&name)?).map_err(raise)?;
            Bl::create(lua, v)
        })?,
    )?;
    set(
        "getxattrs",
        scope.create_function(move |lua, ()| {
            let all = obj().getxattrs().map_err(raise)?;
            let out = lua.create_table()?;
            for (k, v) in all {
                out.set(lua.create_string(&k)?, Bl::create(lua, v)?)?;
            }
            Ok(out)
        })?,
    )?;
    set(
        "setxattr",
        scope.create_function(move |_, (name, v): (Value, Value)| {
            obj().setxattr(&key(&name)?, &bytes_of(&v)?).map_err(raise)
        })?,
    )?;
    set(
        "map_get_val",
        scope.create_function(move |lua, k: Value| {
            let v = obj().map_get_val(&key(&k)?).map_err(raise)?;
            Bl::create(lua, v)
        })?,
    )?;
    set(
        "map_set_val",
        scope.create_function(move |_, (k, v): (Value, Value)| {
            obj().map_set_val(&key(&k)?, &bytes_of(&v)?).map_err(raise)
        })?,
    )?;
    set(
        "map_set_vals",
        scope.create_function(move |_, vals: Table| {
            let mut pairs = Vec::new();
            for pair in vals.pairs::<Value, Value>() {
                let (k, v) = pair?;
                pairs.push((key(&k)?, bytes_of(&v)?));
            }
            let mut o = obj();
            for (k, v) in pairs {
                o.map_set_val(&k, &v).map_err(raise)?;
            }
            Ok(())
        })?,
    )?;
    set(
        "map_get_keys",
        scope.create_function(move |lua, (after, max): (Option<Value>, Option<i64>)| {
            let after = after.as_ref().map(key).transpose()?.unwrap_or_default();
            let max = max.map_or(Ok(usize::MAX), |m| size_arg(m, "max").map(|m| m as usize))?;
            let entries = obj().map_get_vals(&after, b"", max).map_err(raise)?;
            let out = lua.create_table()?;
            for (k, _) in entries {
                out.set(lua.create_string(&k)?, true)?;
            }
            Ok(out)
        })?,
    )?;
    set(
        "map_get_vals",
        scope.create_function(
            move |lua, (after, prefix, max): (Option<Value>, Option<Value>, Option<i64>)| {
                let after = after.as_ref().map(key).transpose()?.unwrap_or_default();
                let prefix = prefix.as_ref().map(key).transpose()?.unwrap_or_default();
                let max = max.map_or(Ok(usize::MAX), |m| size_arg(m, "max").map(|m| m as usize))?;
                let entries = obj().map_get_vals(&after, &prefix, max).map_err(raise)?;
                let out = lua.create_table()?;
                for (k, v) in entries {
                    out.set(lua.create_string(&k)?, Bl::create(lua, v)?)?;
                }
                Ok(out)
            },
        )?,
    )?;
    set(
        "map_remove_key",
        scope.create_function(move |_, k: Value| obj().map_remove_key(&key(&k)?).map_err(raise))?,
    )?;
    set(
        "map_clear",
        scope.create_function(move |_, ()| obj().map_clear().map_err(raise))?,
    )?;
    set(
        "map_read_header",
        scope.create_function(move |lua, ()| {
            let v = obj().map_read_header().map_err(raise)?;
            Bl::create(lua, v)
        })?,
    )?;
    set(
        "map_write_header",
        scope.create_function(move |_, v: Value| {
            obj().map_write_header(&bytes_of(&v)?).map_err(raise)
        })?,
    )?;
    set(
        "current_version",
        scope.create_function(move |_, ()| obj().current_version().map_err(raise))?,
    )?;
    Ok(t)
}

/// `log([level,] ...)`: Ceph's levels, lower is more important (0 error, 1 warn, up to 5
/// info, up to 10 debug, above that trace). Without a level: info.
fn log(site: &Site<'_>, args: &[Value]) {
    let (level, rest) = match args {
        [Value::Integer(l), rest @ ..] if !rest.is_empty() => (*l, rest),
        _ => (5, args),
    };
    let text = rest
        .iter()
        .map(|v| match v {
            Value::String(s) => String::from_utf8_lossy(&s.as_bytes()).into_owned(),
            Value::UserData(ud) => match ud.borrow::<Bl>() {
                Ok(bl) => String::from_utf8_lossy(bl.bytes()).into_owned(),
                Err(_) => "<userdata>".into(),
            },
            other => other
                .to_string()
                .unwrap_or_else(|_| other.type_name().into()),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let (class, method, object) = (site.class, site.method, site.object.as_str());
    match level {
        i64::MIN..=0 => tracing::error!(class, method, object, "{text}"),
        1 => tracing::warn!(class, method, object, "{text}"),
        2..=5 => tracing::info!(class, method, object, "{text}"),
        6..=10 => tracing::debug!(class, method, object, "{text}"),
        _ => tracing::trace!(class, method, object, "{text}"),
    }
}
