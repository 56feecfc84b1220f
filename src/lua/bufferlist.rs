//! `bufferlist`: Ceph's binary-safe byte buffer as scripts see it. `bufferlist.new()`,
//! `bl:str()`, `bl:append(s)`, `#bl`, `bl:length()`, `..`, `==`, `<`, `<=`.
//!
//! The bytes live on the Rust heap, outside Lua's allocator, so every byte a bufferlist holds
//! is charged to the call's memory budget (`budget::charge`) and released when the
//! bufferlist is collected; a script cannot escape the memory limit by appending.

use mlua::{AnyUserData, Lua, MetaMethod, UserData, UserDataMethods, Value};

use super::budget;

pub struct Bl {
    data: Vec<u8>,
}

impl Bl {
    /// A new bufferlist userdata holding `data`, charged to the budget.
    pub fn create(lua: &Lua, data: Vec<u8>) -> mlua::Result<AnyUserData> {
        budget::charge(lua, data.len())?;
        lua.create_userdata(Bl { data })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Bl {
    fn drop(&mut self) {
        budget::release(self.data.len());
    }
}

/// The bytes of a bufferlist or a string argument (numbers too, as Lua's `..` would).
pub fn bytes_of(v: &Value) -> mlua::Result<Vec<u8>> {
    match v {
        Value::UserData(ud) => Ok(ud.borrow::<Bl>()?.data.clone()),
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(i) => Ok(i.to_string().into_bytes()),
        Value::Number(n) => Ok(n.to_string().into_bytes()),
        other => Err(mlua::Error::runtime(format!(
            "expected a bufferlist or a string, got a {}",
            other.type_name()
        ))),
    }
}

impl UserData for Bl {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("str", |lua, this, ()| lua.create_string(&this.data));
        methods.add_method("length", |_, this, ()| Ok(this.data.len()));
        methods.add_method_mut("append", |lua, this, v: Value| {
            let more = bytes_of(&v)?;
            budget::charge(lua, more.len())?;
            this.data.extend_from_slice(&more);
            Ok(())
        });
        methods.add_meta_method(MetaMethod::Len, |_, this, ()| Ok(this.data.len()));
        methods.add_meta_method(MetaMethod::ToString, |lua, this, ()| {
            lua.create_string(&this.data)
        });
        // `..` with a bufferlist on either side gives a new bufferlist.
        methods.add_meta_function(MetaMethod::Concat, |lua, (a, b): (Value, Value)| {
            let mut joined = bytes_of(&a)?;
            joined.extend_from_slice(&bytes_of(&b)?);
            Bl::create(lua, joined)
        });
        methods.add_meta_function(MetaMethod::Eq, |_, (a, b): (Value, Value)| {
            Ok(bytes_of(&a)? == bytes_of(&b)?)
        });
        methods.add_meta_function(MetaMethod::Lt, |_, (a, b): (Value, Value)| {
            Ok(bytes_of(&a)? < bytes_of(&b)?)
        });
        methods.add_meta_function(MetaMethod::Le, |_, (a, b): (Value, Value)| {
            Ok(bytes_of(&a)? <= bytes_of(&b)?)
        });
    }
}

/// The `bufferlist` module table of one call.
pub fn module(lua: &Lua) -> mlua::Result<mlua::Table> {
    let t = lua.create_table()?;
    t.set(
        "new",
        lua.create_function(|lua, init: Option<Value>| {
            let data = match init {
                Some(v) => bytes_of(&v)?,
                None => Vec::new(),
            };
            Bl::create(lua, data)
        })?,
    )?;
    Ok(t)
}
