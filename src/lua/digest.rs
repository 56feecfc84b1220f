//! `digest`: hashes computed in Rust for scripts, so a class can hash an object in place
//! without moving its bytes through Lua strings. `digest.md5(s_or_bl)` returns the hex
//! digest; `digest.new("md5")` returns a hasher with `h:update(s_or_bl)` and `h:hex()` for
//! objects read piece by piece.

use md5::{Digest, Md5};
use mlua::{Lua, UserData, UserDataMethods, Value};

use super::bufferlist::{bytes_of, Bl};
use crate::digest::hex;

struct Hasher(Option<Md5>);

/// Feeds a bufferlist without copying it, or the bytes of a string.
fn feed(h: &mut Md5, v: &Value) -> mlua::Result<()> {
    if let Value::UserData(ud) = v {
        if let Ok(bl) = ud.borrow::<Bl>() {
            h.update(bl.bytes());
            return Ok(());
        }
    }
    h.update(bytes_of(v)?);
    Ok(())
}

impl UserData for Hasher {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("update", |_, this, v: Value| match &mut this.0 {
            Some(h) => feed(h, &v),
            None => Err(mlua::Error::runtime("digest: update after hex()")),
        });
        methods.add_method_mut("hex", |_, this, ()| match this.0.take() {
            Some(h) => Ok(hex(&h.finalize())),
            None => Err(mlua::Error::runtime("digest: hex() called twice")),
        });
    }
}

pub fn module(lua: &Lua) -> mlua::Result<mlua::Table> {
    let t = lua.create_table()?;
    t.set(
        "md5",
        lua.create_function(|_, v: Value| {
            let mut h = Md5::new();
            feed(&mut h, &v)?;
            Ok(hex(&h.finalize()))
        })?,
    )?;
    t.set(
        "new",
        lua.create_function(|_, algo: String| match algo.as_str() {
            "md5" => Ok(Hasher(Some(Md5::new()))),
            other => Err(mlua::Error::runtime(format!(
                "digest.new: unknown algorithm {other:?} (supported: md5)"
            ))),
        })?,
    )?;
    Ok(t)
}
