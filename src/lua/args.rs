//! Arguments of the library functions written in Rust, checked the way Lua's C library
//! checks them (`luaL_checklstring`, `luaL_optinteger`, ...), with Lua's messages: "bad
//! argument #2 to 'find' (string expected, got nil)". Numbers coerce to strings and numeric
//! strings to integers, as in Lua.

use mlua::{IntoLuaMulti, Lua, MultiValue, Table, Value};

/// Lua's truthiness: everything but nil and false.
pub fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Nil | Value::Boolean(false))
}

pub struct Args {
    values: Vec<Value>,
    function: &'static str,
}

impl Args {
    pub fn new(values: MultiValue, function: &'static str) -> Args {
        Args {
            values: values.into_vec(),
            function,
        }
    }

    /// How many arguments were passed (trailing nils count, as in `lua_gettop`).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Argument `i` (1-based); nil when absent.
    pub fn get(&self, i: usize) -> Value {
        self.values.get(i - 1).cloned().unwrap_or(Value::Nil)
    }

    pub fn type_of(&self, i: usize) -> &'static str {
        match self.values.get(i - 1) {
            None => "no value",
            Some(v) => v.type_name(),
        }
    }

    pub fn bad(&self, i: usize, why: &str) -> mlua::Error {
        mlua::Error::runtime(format!("bad argument #{i} to '{}' ({why})", self.function))
    }

    fn expected(&self, i: usize, what: &str) -> mlua::Error {
        self.bad(i, &format!("{what} expected, got {}", self.type_of(i)))
    }

    pub fn string(&self, lua: &Lua, i: usize) -> mlua::Result<mlua::LuaString> {
        lua.coerce_string(self.get(i))?
            .ok_or_else(|| self.expected(i, "string"))
    }

    pub fn int(&self, lua: &Lua, i: usize) -> mlua::Result<i64> {
        let v = self.get(i);
        if let Some(n) = lua.coerce_integer(v.clone())? {
            return Ok(n);
        }
        match lua.coerce_number(v)? {
            Some(_) => Err(self.bad(i, "number has no integer representation")),
            None => Err(self.expected(i, "number")),
        }
    }

    /// An integer argument, `default` when absent or nil.
    pub fn opt_int(&self, lua: &Lua, i: usize, default: i64) -> mlua::Result<i64> {
        match self.get(i) {
            Value::Nil => Ok(default),
            _ => self.int(lua, i),
        }
    }

    pub fn table(&self, i: usize) -> mlua::Result<mlua::Table> {
        match self.get(i) {
            Value::Table(t) => Ok(t),
            _ => Err(self.expected(i, "table")),
        }
    }
}

/// Sets `table[name]` to a function taking its arguments as `Args` (named `name` in
/// argument errors).
pub fn define<R: IntoLuaMulti>(
    lua: &Lua,
    table: &Table,
    name: &'static str,
    f: impl Fn(&Lua, Args) -> mlua::Result<R> + mlua::MaybeSend + 'static,
) -> mlua::Result<()> {
    let func = lua.create_function(move |lua, a: MultiValue| f(lua, Args::new(a, name)))?;
    table.raw_set(name, func)
}
