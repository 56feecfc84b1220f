//! The base functions scripts see besides Lua's own safe ones, each a wrapper that keeps
//! the sandbox whole:
//!
//! - `pcall`/`xpcall` as Ceph's cls_lua wraps `pcall`: a failed storage call gives
//!   `false, -errno, message`, any other error `false, message`, a tripped limit is raised
//!   again, and `pcall()` without arguments raises, as Lua's own does;
//! - `setmetatable` refusing `__gc` (a finalizer would run later, outside any call's
//!   limits) and `getmetatable` hiding userdata metatables;
//! - `load` of text chunks only, into the calling script's environment by default (Ceph's
//!   environment has `load`; precompiled bytecode could crash the VM);
//! - `collectgarbage` with the options that cannot change how the VM behaves for the next
//!   call (`collect`, `count`, `step`, `isrunning`).

use mlua::{chunk::ChunkMode, Function, Lua, Table, Value};

use super::args::{define, Args};
use super::budget;
use super::errors::classify_caught;

/// The registry slot holding the running call's environment (for `load`).
pub const ENV_KEY: &str = "lunafs.env";

/// pcall and xpcall over the real pcall.
const PCALL: &str = r#"
local real_pcall, classify, pack, unpack, select, error = ...
local function settle(r, handler)
  if r[1] then return unpack(r, 1, r.n) end
  local fatal, errno, msg = classify(r[2])
  if fatal then error(r[2], 0) end
  local err = r[2]
  if msg ~= nil then err = msg end
  if errno then
    if handler then return false, handler(-errno, err) end
    return false, -errno, err
  end
  if handler then return false, handler(err) end
  return false, err
end
local function pcall(...)
  if select('#', ...) == 0 then error("bad argument #1 to 'pcall' (value expected)", 2) end
  return settle(pack(real_pcall(...)))
end
local function xpcall(f, handler, ...) return settle(pack(real_pcall(f, ...)), handler) end
return pcall, xpcall
"#;

/// Adds the wrapped base functions to `base`, taking the real ones from `globals`.
pub fn install(lua: &Lua, base: &Table, globals: &Table) -> mlua::Result<()> {
    let classify = lua.create_function(|_, err: Value| Ok(classify_caught(&err)))?;
    let table: Table = globals.get("table")?;
    let (pcall, xpcall): (Function, Function) = lua.load(PCALL).set_name("=pcall").call((
        globals.get::<Function>("pcall")?,
        classify,
        table.get::<Function>("pack")?,
        table.get::<Function>("unpack")?,
        globals.get::<Function>("select")?,
        globals.get::<Function>("error")?,
    ))?;
    base.set("pcall", pcall)?;
    base.set("xpcall", xpcall)?;
    let real_setmetatable: Function = globals.get("setmetatable")?;
    base.set(
        "setmetatable",
        lua.create_function(move |_, (t, mt): (Table, Option<Table>)| {
            if let Some(mt) = &mt {
                if !matches!(mt.raw_get::<Value>("__gc")?, Value::Nil) {
                    return Err(mlua::Error::runtime(
                        "setmetatable: __gc finalizers are not allowed in handlers",
                    ));
                }
            }
            real_setmetatable.call::<Table>((t, mt))
        })?,
    )?;
    let real_getmetatable: Function = globals.get("getmetatable")?;
    base.set(
        "getmetatable",
        lua.create_function(move |_, v: Value| match v {
            Value::UserData(_) => Ok(Value::Nil),
            v => real_getmetatable.call::<Value>(v),
        })?,
    )?;
    define(lua, base, "load", load)?;
    define(lua, base, "collectgarbage", collectgarbage)
}

/// `load(chunk [, chunkname [, mode [, env]]])`: a function, or nil and the message.
fn load(lua: &Lua, a: Args) -> mlua::Result<(Value, Option<String>)> {
    // A string chunk is on the Lua heap already; the pieces a reader returns are gathered
    // here, charged to the call.
    let mut gathered = budget::Buffer::new();
    let chunk = a.get(1);
    let text;
    let source: &[u8] = match &chunk {
        Value::String(s) => {
            text = s.as_bytes();
            &text
        }
        Value::Function(reader) => {
            loop {
                match reader.call::<Value>(())? {
                    Value::Nil => break,
                    Value::String(s) if s.as_bytes().is_empty() => break,
                    Value::String(s) => gathered.extend(lua, &s.as_bytes())?,
                    _ => {
                        return Ok((
                            Value::Nil,
                            Some("reader function must return a string".into()),
                        ))
                    }
                }
            }
            gathered.bytes()
        }
        _ => return Err(a.bad(1, &format!("string expected, got {}", a.type_of(1)))),
    };
    // Compiling is linear in the source, in C: its cost is charged before it starts.
    if !budget::keep_going(u32::try_from(source.len() / 16).unwrap_or(u32::MAX)) {
        return Err(budget::limit_error());
    }
    let name = match a.get(2) {
        Value::Nil if matches!(a.get(1), Value::String(_)) => {
            String::from_utf8_lossy(source).into_owned()
        }
        Value::Nil => "=(load)".into(),
        _ => a.string(lua, 2)?.to_string_lossy(),
    };
    let mode = match a.get(3) {
        Value::Nil => "bt".to_string(),
        _ => a.string(lua, 3)?.to_string_lossy(),
    };
    if !mode.contains('t') {
        return Ok((
            Value::Nil,
            Some(format!("attempt to load a text chunk (mode is '{mode}')")),
        ));
    }
    let env: Table = match a.get(4) {
        Value::Nil => lua.named_registry_value(ENV_KEY)?,
        _ => a.table(4)?,
    };
    match lua
        .load(source)
        .set_name(name)
        .set_mode(ChunkMode::Text)
        .set_environment(env)
        .into_function()
    {
        Ok(f) => Ok((Value::Function(f), None)),
        Err(e) => Ok((Value::Nil, Some(super::errors::message(&e)))),
    }
}

/// `collectgarbage([opt [, arg]])` for the options that leave the collector as it was.
fn collectgarbage(lua: &Lua, a: Args) -> mlua::Result<Value> {
    let opt = match a.get(1) {
        Value::Nil => "collect".to_string(),
        _ => a.string(lua, 1)?.to_string_lossy(),
    };
    match opt.as_str() {
        "collect" => {
            // A full collection is linear in the heap, in C: charged before it runs.
            let heap = u32::try_from(lua.used_memory() / 64).unwrap_or(u32::MAX);
            if !budget::keep_going(heap) {
                return Err(budget::limit_error());
            }
            lua.gc_collect()?;
            Ok(Value::Integer(0))
        }
        "count" => Ok(Value::Number(lua.used_memory() as f64 / 1024.0)),
        "step" => Ok(Value::Boolean(lua.gc_step()?)),
        "isrunning" => Ok(Value::Boolean(lua.gc_is_running())),
        other => Err(a.bad(
            1,
            &format!(
                "option '{other}' is not allowed in handlers (collect, count, step, isrunning)"
            ),
        )),
    }
}
