//! `lua`: the sandboxed Lua 5.4 VM that runs object classes (Ceph's cls_lua) next to the data,
//! and bucket notification and background scripts (`notify`) in the dispatcher.
//!
//! Owns the one sandbox constructor and the per-call limits (`sandbox`), the APIs scripts see
//! (`objclass`/`cls`, `bufferlist`, `image`, `digest`), and the per-thread cache of compiled
//! scripts. It must not touch the store: it sees one object through the `Object` trait, which
//! `core` implements over a transaction, and installed modules through `Modules`. No mlua type
//! crosses this module's public API, so `core` never imports mlua.

mod args;
mod base;
pub mod budget;
pub mod bufferlist;
mod caller;
pub mod digest;
mod errors;
pub mod image;
mod msgpack;
pub mod nats;
pub mod objclass;
pub mod pattern;
pub mod sandbox;
mod strlib;
mod tablib;

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// Per-call limits of a handler. A handler that passes one fails (the memory limit with
/// -ENOMEM, the instruction and time limits with -ETIMEDOUT) and changes nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes a call may hold, counted three ways, each against this limit: the Lua heap,
    /// the contents of its bufferlists and images, and the changes it has not committed.
    pub memory: usize,
    /// Lua VM instructions a call may execute.
    pub instructions: u64,
    /// Wall-clock time a call may take (checked between instructions, so time spent inside
    /// one Rust function, such as decoding a large image, counts but is not interrupted).
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            instructions: 100_000_000,
            time: Duration::from_secs(10),
        }
    }
}

/// A script as stored: its name and source, and a generation that changes whenever the
/// source does, so compiled copies are keyed by (name, generation) and a new version
/// replaces the old everywhere at once.
#[derive(Debug, Clone)]
pub struct Script {
    pub name: String,
    pub generation: u64,
    pub source: Arc<[u8]>,
}

/// The one object a handler works on. `core` implements it over a transaction that holds
/// every change until the call ends; errors carry the errno the script sees.
pub trait Object {
    /// (size, mtime in seconds).
    fn stat(&mut self) -> Result<(u64, i64)>;
    fn create(&mut self, exclusive: bool) -> Result<()>;
    fn remove(&mut self) -> Result<()>;
    fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>>;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    fn write_full(&mut self, data: &[u8]) -> Result<()>;
    fn truncate(&mut self, size: u64) -> Result<()>;
    fn getxattr(&mut self, name: &[u8]) -> Result<Vec<u8>>;
    /// Every xattr by its full name (`user.*` included).
    fn getxattrs(&mut self) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn setxattr(&mut self, name: &[u8], value: &[u8]) -> Result<()>;
    fn map_get_val(&mut self, key: &[u8]) -> Result<Vec<u8>>;
    fn map_set_val(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Entries with keys after `start_after` that start with `prefix`, at most `max`.
    fn map_get_vals(
        &mut self,
        start_after: &[u8],
        prefix: &[u8],
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    fn map_remove_key(&mut self, key: &[u8]) -> Result<()>;
    fn map_clear(&mut self) -> Result<()>;
    fn map_read_header(&mut self) -> Result<Vec<u8>>;
    fn map_write_header(&mut self, value: &[u8]) -> Result<()>;
    fn current_version(&mut self) -> Result<u64>;
    /// How logs name the object (`bucket/key`, or `inode N`).
    fn describe(&self) -> String;
}

/// A value of the global table notification scripts share.
#[derive(Debug, Clone, PartialEq)]
pub enum TableValue {
    Str(Vec<u8>),
    Int(i64),
    Num(f64),
    Bool(bool),
}

/// What a notification or background script can do outside its VM. The dispatcher
/// implements it; errors carry the errno and message the script sees.
pub trait Notifier {
    /// Queues a message for publishing once the script has succeeded.
    fn publish(
        &mut self,
        subject: &str,
        payload: &[u8],
        headers: Vec<(String, String)>,
        topic: Option<&str>,
    ) -> Result<()>;
    fn table_get(&mut self, key: &str) -> Result<Option<TableValue>>;
    fn table_set(&mut self, key: &str, value: Option<TableValue>) -> Result<()>;
    /// Adds `delta` to a number (absent counts as 0) and returns the new value.
    fn table_add(&mut self, key: &str, delta: f64) -> Result<TableValue>;
}

/// A notification script run: the event (record and body) and its topic, or neither for
/// the background script.
pub struct NotifyRun<'a> {
    pub script: &'a Script,
    pub event: Option<&'a serde_json::Value>,
    pub event_json: Option<&'a str>,
    pub topic: Option<&'a serde_json::Value>,
}

/// Installed Lua modules, for `require`.
pub trait Modules {
    /// The newest installed version of module `name` (e.g. `json` or `json.util`).
    fn module(&self, name: &str) -> Result<Option<Script>>;
}

/// What one handler call gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The handler's result: >= 0 commits its changes, < 0 (a negative errno) discards them.
    pub result: i32,
    /// What the handler appended to its output bufferlist.
    pub output: Vec<u8>,
    /// Why the call failed, when it failed with an error rather than a plain return.
    pub message: Option<String>,
}

impl Outcome {
    pub fn failed(errno: i32, message: impl Into<String>) -> Outcome {
        Outcome {
            result: -errno,
            output: Vec::new(),
            message: Some(message.into()),
        }
    }
}

/// What to run: a method of a stored class, or of an inline script (Ceph's eval).
pub struct Call<'a> {
    pub script: &'a Script,
    pub method: &'a str,
    pub input: &'a [u8],
    /// The class name for logs (`inline` for inline scripts).
    pub class: &'a str,
    /// The task (thread id) whose request made the call: the call stops, committing
    /// nothing, once that task has been killed. None for calls nobody waits on.
    pub caller: Option<u32>,
}

/// Makes every running call stop at its next check, and every later one at its first,
/// committing nothing (the daemon is stopping).
pub fn abandon_calls() {
    budget::abandon_all();
}

/// Whether calls are being abandoned: a call about to commit must not.
pub fn calls_abandoned() -> bool {
    budget::abandoned()
}

/// Runs handlers with the configured limits on a VM owned by the calling thread.
pub struct Engine {
    limits: parking_lot::RwLock<Limits>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Engine {
    pub fn new(limits: Limits) -> Engine {
        Engine {
            limits: parking_lot::RwLock::new(limits),
        }
    }

    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write() = limits;
    }

    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    /// Compiles `source` without running it: a syntax error is refused with Lua's message
    /// (which names the script and line).
    pub fn check(name: &str, source: &[u8]) -> Result<()> {
        sandbox::check_syntax(name, source).map_err(|message| Error::Script {
            script: name.to_string(),
            message,
        })
    }

    /// Runs a notification or background script; Err is the script's error message.
    pub fn notify(
        &self,
        run: &NotifyRun<'_>,
        notifier: &mut dyn Notifier,
        modules: &dyn Modules,
    ) -> std::result::Result<(), String> {
        sandbox::run_notify(self.limits(), run, notifier, modules)
    }

    /// Runs `call` against `object`. Never fails as a Rust call: every failure is an
    /// `Outcome` with a negative result, as a Ceph client would see it.
    pub fn call(&self, call: &Call<'_>, object: &mut dyn Object, modules: &dyn Modules) -> Outcome {
        sandbox::run(self.limits(), call, object, modules)
    }
}
