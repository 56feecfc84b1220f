//! How an error inside a script becomes what Ceph's cls_lua makes of it: a failed storage
//! call (a `ClsError`, raised by `objclass`) carries its errno; a tripped limit carries the
//! limit's; anything else (a Lua error, a bad argument, a failed conversion) is EIO.

use mlua::Value;

use super::budget::{self, Trip};
use super::objclass::ClsError;

/// The storage error inside `e`, if it is one (through the callback layers mlua adds).
pub fn storage_error(e: &mlua::Error) -> Option<&ClsError> {
    match e {
        mlua::Error::CallbackError { cause, .. } => storage_error(cause),
        mlua::Error::ExternalError(inner) => match inner.downcast_ref::<ClsError>() {
            Some(c) => Some(c),
            None => inner.downcast_ref::<mlua::Error>().and_then(storage_error),
        },
        _ => None,
    }
}

/// The message of `e` without mlua's wrapping (callback layers, tracebacks).
pub fn message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => message(cause),
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::ExternalError(inner) => match inner.downcast_ref::<mlua::Error>() {
            Some(e) => message(e),
            None => inner.to_string(),
        },
        other => other.to_string(),
    }
}

/// The errno and message of an error that ended a call.
pub fn classify(e: &mlua::Error) -> (i32, String) {
    if let Some(c) = storage_error(e) {
        return (c.errno, c.message.clone());
    }
    match e {
        mlua::Error::MemoryError(m) => (libc::ENOMEM, m.clone()),
        other => (libc::EIO, message(other)),
    }
}

/// What `pcall` makes of a caught error value: (fatal, errno, message). Fatal errors are
/// tripped limits, which must not be swallowed. A storage error gives its errno and
/// message; another error raised in Rust gives its message as a string (a Lua script sees
/// "bad argument ..." as Ceph's does); an error a script raised itself is left as it is
/// (errno and message nil).
pub fn classify_caught(err: &Value) -> (bool, Option<i32>, Option<String>) {
    if budget::tripped().is_some() {
        return (true, None, None);
    }
    match err {
        Value::Error(e) => {
            if let Some(c) = storage_error(e) {
                return (false, Some(c.errno), Some(c.for_script()));
            }
            if matches!(**e, mlua::Error::MemoryError(_)) {
                budget::trip(Trip::Memory);
                return (true, None, None);
            }
            (false, None, Some(message(e)))
        }
        Value::String(s) if s.as_bytes().as_ref() == b"not enough memory" => {
            budget::trip(Trip::Memory);
            (true, None, None)
        }
        _ => (false, None, None),
    }
}
