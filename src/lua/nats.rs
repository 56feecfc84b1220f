//! What notification and background scripts see besides the safe base library:
//!
//! - `event` (the S3 record as a table) and `event_json` (the `{"Records":[...]}` body) in
//!   notification scripts, and `topic` (name, subject, jetstream, opaque_data);
//! - `nats.publish(subject, payload [, headers [, topic]])`: queues a message, published
//!   when the script returns without error (an error publishes nothing); `headers` is a
//!   table of strings; `topic` names the connection (the event's topic by default; the
//!   background script must name one);
//! - `RGW`, the persistent global table (Ceph's name): `RGW[k]` reads, `RGW[k] = v`
//!   stores a string, number or boolean, `RGW[k] = nil` deletes, `RGW.increment(k [, n])`
//!   and `RGW.decrement(k [, n])` change a number atomically and return the new value;
//! - `print(...)` logs at info level with the script's name.

use std::cell::RefCell;

use mlua::{Lua, Scope, Table, Value, Variadic};
use serde_json::Value as Json;

use super::objclass::raise;
use super::{Notifier, TableValue};

/// Makes the `nats` and `RGW` tables and `print` for one script run.
pub fn install<'scope, 'env: 'scope, 'n: 'env>(
    lua: &Lua,
    scope: &'scope Scope<'scope, 'env>,
    env: &Table,
    notifier: &'env RefCell<&'n mut dyn Notifier>,
    name: &'env str,
) -> mlua::Result<()> {
    let nats = lua.create_table()?;
    nats.set(
        "publish",
        scope.create_function(
            move |_,
                  (subject, payload, headers, topic): (
                String,
                mlua::LuaString,
                Option<Table>,
                Option<String>,
            )| {
                let mut hs = Vec::new();
                if let Some(h) = headers {
                    for pair in h.pairs::<String, String>() {
                        hs.push(pair?);
                    }
                }
                notifier
                    .borrow_mut()
                    .publish(&subject, &payload.as_bytes(), hs, topic.as_deref())
                    .map_err(raise)
            },
        )?,
    )?;
    env.raw_set("nats", nats)?;

    let rgw = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.set(
        "__index",
        scope.create_function(move |lua, (_, key): (Table, String)| {
            match notifier.borrow_mut().table_get(&key).map_err(raise)? {
                Some(v) => to_lua(lua, v),
                None => Ok(Value::Nil),
            }
        })?,
    )?;
    meta.set(
        "__newindex",
        scope.create_function(move |_, (_, key, value): (Table, String, Value)| {
            let v = match value {
                Value::Nil => None,
                v => Some(from_lua(&v)?),
            };
            notifier.borrow_mut().table_set(&key, v).map_err(raise)
        })?,
    )?;
    let add = |sign: f64| {
        scope.create_function(move |lua, (key, by): (String, Option<f64>)| {
            let v = notifier
                .borrow_mut()
                .table_add(&key, sign * by.unwrap_or(1.0))
                .map_err(raise)?;
            to_lua(lua, v)
        })
    };
    rgw.raw_set("increment", add(1.0)?)?;
    rgw.raw_set("decrement", add(-1.0)?)?;
    rgw.set_metatable(Some(meta))?;
    env.raw_set("RGW", rgw)?;

    env.raw_set(
        "print",
        scope.create_function(move |_, args: Variadic<Value>| {
            let text: Vec<String> = args
                .iter()
                .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_string()))
                .collect();
            tracing::info!(script = name, "{}", text.join("\t"));
            Ok(())
        })?,
    )?;
    Ok(())
}

fn to_lua(lua: &Lua, v: TableValue) -> mlua::Result<Value> {
    Ok(match v {
        TableValue::Str(s) => Value::String(lua.create_string(&s)?),
        TableValue::Int(i) => Value::Integer(i),
        TableValue::Num(n) => Value::Number(n),
        TableValue::Bool(b) => Value::Boolean(b),
    })
}

fn from_lua(v: &Value) -> mlua::Result<TableValue> {
    Ok(match v {
        Value::String(s) => TableValue::Str(s.as_bytes().to_vec()),
        Value::Integer(i) => TableValue::Int(*i),
        Value::Number(n) => TableValue::Num(*n),
        Value::Boolean(b) => TableValue::Bool(*b),
        other => {
            return Err(mlua::Error::runtime(format!(
                "RGW values are strings, numbers or booleans, not a {}",
                other.type_name()
            )))
        }
    })
}

/// A JSON value as a Lua value (objects and arrays become tables, null becomes nil).
pub fn json_to_lua(lua: &Lua, v: &Json) -> mlua::Result<Value> {
    Ok(match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(a) => {
            let t = lua.create_table_with_capacity(a.len(), 0)?;
            for (i, item) in a.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        Json::Object(o) => {
            let t = lua.create_table_with_capacity(0, o.len())?;
            for (k, item) in o {
                t.raw_set(k.as_str(), json_to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}
