//! The one sandbox: how a Lua VM is built, how a call's environment is made, and the limits.
//!
//! Each thread that runs handlers owns one VM (FUSE worker threads run calls in parallel,
//! each on its own VM), created on first use with only the `table`, `string`, `math` and
//! `utf8` libraries and a whitelist of base functions: no `io`, `os`, `debug`, `load`,
//! `loadfile`, `dofile`, `collectgarbage`, `coroutine`, and `require` only of installed
//! packages. Compiled scripts are cached per VM by (name, generation), in text mode only
//! (precompiled bytecode is refused: it can crash the VM).
//!
//! Every call gets a fresh environment table holding copies of the library tables, so
//! nothing one call assigns (a global, `string.foo = ...`) is seen by the next. The shared
//! string metatable is hidden (`getmetatable("")` is false) and `getmetatable` of a userdata
//! is nil, so no shared table is reachable.
//!
//! Limits, per call: a memory budget (Lua heap and, separately, the bytes held by
//! bufferlists and images), an instruction budget and a deadline, checked by a hook every
//! 1000 instructions. Once a limit trips it stays tripped for the call: `pcall` re-raises
//! it, so a script cannot catch its way past a limit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

use mlua::{
    chunk::ChunkMode, Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value,
    VmState,
};

use super::bufferlist::Bl;
use super::objclass::{self, ClsError, Site};
use super::{Call, Limits, Modules, Notifier, NotifyRun, Object, Outcome, Script};

/// Base functions every call may use.
const SAFE_GLOBALS: &[&str] = &[
    "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawlen", "rawset",
    "select", "tonumber", "tostring", "type", "_VERSION",
];

/// Libraries every call gets a fresh copy of.
const LIBRARIES: &[&str] = &["string", "table", "math", "utf8"];

/// How often the limit hook runs, in VM instructions.
const HOOK_EVERY: u32 = 1000;

/// Compiled scripts kept per VM before the cache is emptied.
const MAX_COMPILED: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    Memory,
    Instructions,
    Time,
}

impl Trip {
    fn errno(self) -> i32 {
        match self {
            Trip::Memory => libc::ENOMEM,
            Trip::Instructions | Trip::Time => libc::ETIMEDOUT,
        }
    }

    fn message(self, limits: &Limits) -> String {
        match self {
            Trip::Memory => format!("memory limit of {} bytes exceeded", limits.memory),
            Trip::Instructions => {
                format!("instruction limit of {} exceeded", limits.instructions)
            }
            Trip::Time => format!("time limit of {:?} exceeded", limits.time),
        }
    }
}

/// The running call's budget, per thread (a thread runs one call at a time).
struct Budget {
    /// Bytes held by live bufferlists and images of this thread's VM.
    held: Cell<usize>,
    memory: Cell<usize>,
    instructions_left: Cell<i64>,
    /// None outside a call: the hook then lets everything run (VM set-up code).
    deadline: Cell<Option<Instant>>,
    tripped: Cell<Option<Trip>>,
}

thread_local! {
    static BUDGET: Budget = const {
        Budget {
            held: Cell::new(0),
            memory: Cell::new(usize::MAX),
            instructions_left: Cell::new(i64::MAX),
            deadline: Cell::new(None),
            tripped: Cell::new(None),
        }
    };
    static VM: RefCell<Option<Vm>> = const { RefCell::new(None) };
}

/// Charges `n` bytes of Rust-side memory (bufferlist or image contents) to the call. Over
/// the budget, collects garbage once (freeing dead bufferlists) before refusing.
pub fn charge(lua: &Lua, n: usize) -> mlua::Result<()> {
    let over = || BUDGET.with(|b| b.held.get().saturating_add(n) > b.memory.get());
    if over() {
        lua.gc_collect()?;
        if over() {
            BUDGET.with(|b| b.tripped.set(Some(Trip::Memory)));
            return Err(mlua::Error::MemoryError(format!(
                "bufferlist of {n} more bytes would pass the call's memory limit"
            )));
        }
    }
    BUDGET.with(|b| b.held.set(b.held.get() + n));
    Ok(())
}

/// Checks that `n` more bytes would fit the budget (collecting garbage if needed), without
/// charging them: for reads whose result is charged once it exists.
pub fn reserve(lua: &Lua, n: usize) -> mlua::Result<()> {
    charge(lua, n)?;
    release(n);
    Ok(())
}

/// Returns bytes charged by `charge` (a bufferlist or image was collected).
pub fn release(n: usize) {
    // The VM may be dropped during thread exit, after the budget is gone: nothing to count.
    let _ = BUDGET.try_with(|b| b.held.set(b.held.get().saturating_sub(n)));
}

/// Bytes the call may still charge.
pub fn budget_left(_lua: &Lua) -> usize {
    BUDGET.with(|b| b.memory.get().saturating_sub(b.held.get()))
}

/// Compiles `source` in a throwaway VM: Ok, or Lua's message naming the script and line.
pub fn check_syntax(name: &str, source: &[u8]) -> Result<(), String> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|e| e.to_string())?;
    compile(&lua, name, source)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn compile(lua: &Lua, name: &str, source: &[u8]) -> mlua::Result<Function> {
    lua.load(source)
        .set_name(format!("={name}"))
        .set_mode(ChunkMode::Text)
        .into_function()
}

struct Vm {
    lua: Lua,
    /// The whitelisted base functions, plus the wrapped pcall/xpcall/getmetatable/print.
    base: Table,
    /// The real library tables, copied into each call's environment.
    libraries: Vec<(&'static str, Table)>,
    /// `bufferlist`, `digest`, `image`: made once, copied per call.
    modules: Vec<(&'static str, Table)>,
    compiled: HashMap<(String, u64), Function>,
}

/// Runs `f` on this thread's VM, creating it on first use.
fn with_vm<T>(f: impl FnOnce(&mut Vm) -> T, failed: impl FnOnce(String) -> T) -> T {
    VM.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            match Vm::new() {
                Ok(vm) => *slot = Some(vm),
                Err(e) => return failed(format!("starting Lua: {e}")),
            }
        }
        f(slot.as_mut().expect("VM created above"))
    })
}

/// Runs one call on this thread's VM.
pub fn run(
    limits: Limits,
    call: &Call<'_>,
    object: &mut dyn Object,
    modules: &dyn Modules,
) -> Outcome {
    with_vm(
        |vm| vm.run(limits, call, object, modules),
        |e| Outcome::failed(libc::EIO, e),
    )
}

/// Runs a notification or background script on this thread's VM (see `lua::notify`).
pub fn run_notify(
    limits: Limits,
    run: &NotifyRun<'_>,
    notifier: &mut dyn Notifier,
    modules: &dyn Modules,
) -> Result<(), String> {
    with_vm(
        |vm| {
            let main = vm.compiled(run.script).map_err(|e| e.to_string())?;
            vm.limited(limits, |vm| {
                vm.notify_in_scope(run, notifier, modules, main)
            })
            .and_then(|r| r)
            .map_err(|(_, message)| message)
        },
        Err,
    )
}

impl Vm {
    fn new() -> mlua::Result<Vm> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
            LuaOptions::default(),
        )?;
        // Strings share one metatable whose __index is the real string library.
        lua.load("getmetatable('').__metatable = false").exec()?;
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            |_, _| {
                BUDGET.with(|b| {
                    if b.deadline.get().is_none() {
                        return Ok(VmState::Continue);
                    }
                    if b.tripped.get().is_none() {
                        let left = b.instructions_left.get() - HOOK_EVERY as i64;
                        b.instructions_left.set(left);
                        if left < 0 {
                            b.tripped.set(Some(Trip::Instructions));
                        } else if b.deadline.get().is_some_and(|d| Instant::now() > d) {
                            b.tripped.set(Some(Trip::Time));
                        }
                    }
                    match b.tripped.get() {
                        Some(t) => Err(mlua::Error::runtime(format!("{t:?} limit reached"))),
                        None => Ok(VmState::Continue),
                    }
                })
            },
        )?;
        let globals = lua.globals();
        let base = lua.create_table()?;
        for name in SAFE_GLOBALS {
            base.set(*name, globals.get::<Value>(*name)?)?;
        }
        let classify = lua.create_function(|_, err: Value| Ok(classify_value(&err)))?;
        let (pcall, xpcall): (Function, Function) = lua.load(PCALL).set_name("=pcall").call((
            globals.get::<Function>("pcall")?,
            classify,
            globals.get::<Table>("table")?.get::<Function>("pack")?,
            globals.get::<Table>("table")?.get::<Function>("unpack")?,
        ))?;
        base.set("pcall", pcall)?;
        base.set("xpcall", xpcall)?;
        // Finalizers would run later, outside any call's limits (at a collection, maybe in
        // another call): a metatable with __gc is refused.
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
        let libraries = LIBRARIES
            .iter()
            .map(|name| Ok((*name, globals.get::<Table>(*name)?)))
            .collect::<mlua::Result<Vec<_>>>()?;
        let modules = vec![
            ("bufferlist", super::bufferlist::module(&lua)?),
            ("digest", super::digest::module(&lua)?),
            ("image", super::image::module(&lua)?),
        ];
        Ok(Vm {
            lua,
            base,
            libraries,
            modules,
            compiled: HashMap::new(),
        })
    }

    fn compiled(&mut self, script: &Script) -> mlua::Result<Function> {
        let key = (script.name.clone(), script.generation);
        if let Some(f) = self.compiled.get(&key) {
            return Ok(f.clone());
        }
        if self.compiled.len() >= MAX_COMPILED {
            self.compiled.clear();
        }
        let f = compile(&self.lua, &script.name, &script.source)?;
        self.compiled.insert(key, f.clone());
        Ok(f)
    }

    /// A fresh environment: the base functions and copies of the library tables.
    fn environment(&self) -> mlua::Result<Table> {
        let env = self.lua.create_table_with_capacity(0, 32)?;
        for pair in self.base.pairs::<Value, Value>() {
            let (k, v) = pair?;
            env.raw_set(k, v)?;
        }
        for (name, lib) in self.libraries.iter().chain(&self.modules) {
            let copy = self.lua.create_table()?;
            for pair in lib.pairs::<Value, Value>() {
                let (k, v) = pair?;
                copy.raw_set(k, v)?;
            }
            env.raw_set(*name, copy)?;
        }
        env.raw_set("_G", env.clone())?;
        Ok(env)
    }

    fn run(
        &mut self,
        limits: Limits,
        call: &Call<'_>,
        object: &mut dyn Object,
        modules: &dyn Modules,
    ) -> Outcome {
        let main = match self.compiled(call.script) {
            Ok(f) => f,
            // A stored class always compiled when it was stored; an inline script may not.
            Err(e) => return Outcome::failed(libc::EIO, e.to_string()),
        };
        let mut output = Vec::new();
        match self.limited(limits, |vm| {
            vm.call_in_scope(call, object, modules, main, &mut output)
        }) {
            Ok(Ok(result)) => Outcome {
                result,
                output,
                message: None,
            },
            // An error keeps what the handler appended; a tripped limit returns nothing.
            Ok(Err((errno, message))) => Outcome {
                result: -errno,
                output,
                message: Some(message),
            },
            Err((errno, message)) => Outcome::failed(errno, message),
        }
    }

    /// Runs `f` under `limits`. The outer error is a tripped limit (whatever `f` returned),
    /// the inner one `f`'s own.
    #[allow(clippy::type_complexity)]
    fn limited<T>(
        &mut self,
        limits: Limits,
        f: impl FnOnce(&mut Self) -> Result<T, (i32, String)>,
    ) -> Result<Result<T, (i32, String)>, (i32, String)> {
        let baseline = self.lua.used_memory();
        let _ = self
            .lua
            .set_memory_limit(baseline.saturating_add(limits.memory));
        BUDGET.with(|b| {
            b.memory.set(limits.memory);
            b.instructions_left
                .set(i64::try_from(limits.instructions).unwrap_or(i64::MAX));
            b.deadline.set(Some(Instant::now() + limits.time));
            b.tripped.set(None);
        });
        let result = f(self);
        let tripped = BUDGET.with(|b| {
            b.deadline.set(None);
            b.tripped.take()
        });
        let _ = self.lua.set_memory_limit(0);
        // Dead bufferlists are invisible to Lua's GC pacing (their bytes are not on the Lua
        // heap): collect when they hold much, and after a call that hit a limit.
        if tripped.is_some() || BUDGET.with(|b| b.held.get()) > (4 << 20) {
            let _ = self.lua.gc_collect();
        }
        match tripped {
            Some(trip) => Err((trip.errno(), trip.message(&limits))),
            None => Ok(result),
        }
    }

    /// `require` of installed modules, loaded into `env` once per run.
    fn install_require<'scope, 'env: 'scope>(
        &self,
        scope: &'scope mlua::Scope<'scope, 'env>,
        env: &Table,
        modules: &'env dyn Modules,
    ) -> mlua::Result<()> {
        let loaded = self.lua.create_table()?;
        let require_env = env.clone();
        env.raw_set(
            "require",
            scope.create_function(move |lua, name: String| {
                if let Some(v) = loaded.get::<Option<Value>>(name.as_str())? {
                    return Ok(v);
                }
                let script = modules
                    .module(&name)
                    .map_err(objclass::raise)?
                    .ok_or_else(|| {
                        mlua::Error::runtime(format!(
                            "module {name:?} is not installed (lunafs package add)"
                        ))
                    })?;
                let f = compile(lua, &script.name, &script.source)?;
                f.set_environment(require_env.clone())?;
                let v = match f.call::<Value>(name.as_str())? {
                    Value::Nil => Value::Boolean(true),
                    v => v,
                };
                loaded.set(name.as_str(), v.clone())?;
                Ok(v)
            })?,
        )
    }

    /// Runs a notification or background script's top level with its API.
    fn notify_in_scope(
        &self,
        run: &NotifyRun<'_>,
        notifier: &mut dyn Notifier,
        modules: &dyn Modules,
        main: Function,
    ) -> Result<(), (i32, String)> {
        let notifier = RefCell::new(notifier);
        let lua = &self.lua;
        let name = run.script.name.as_str();
        lua.scope(|scope| {
            let env = self.environment()?;
            self.install_require(scope, &env, modules)?;
            super::notify::install(lua, scope, &env, &notifier, name)?;
            if let Some(event) = run.event {
                env.raw_set("event", super::notify::json_to_lua(lua, event)?)?;
            }
            if let Some(json) = run.event_json {
                env.raw_set("event_json", json)?;
            }
            if let Some(topic) = run.topic {
                env.raw_set("topic", super::notify::json_to_lua(lua, topic)?)?;
            }
            main.set_environment(env)?;
            main.call::<()>(())
        })
        .map_err(|e| classify_error(&e))
    }

    /// Runs the script's top level, then the registered method; Ok is the handler's result.
    fn call_in_scope(
        &self,
        call: &Call<'_>,
        object: &mut dyn Object,
        modules: &dyn Modules,
        main: Function,
        output: &mut Vec<u8>,
    ) -> Result<i32, (i32, String)> {
        let site = Site {
            class: call.class,
            method: call.method,
            object: object.describe(),
        };
        let object = RefCell::new(object);
        let lua = &self.lua;
        let fail = |e: mlua::Error| classify_error(&e);
        lua.scope(|scope| {
            let env = self.environment()?;
            let registered = lua.create_table()?;
            let cls = objclass::module(lua, scope, &object, &site, &registered)?;
            env.raw_set("objclass", cls.clone())?;
            env.raw_set("cls", cls.clone())?;
            let log: Function = cls.get("log")?;
            env.raw_set("print", log)?;
            self.install_require(scope, &env, modules)?;
            main.set_environment(env.clone())?;
            main.call::<()>(())?;
            let handler = match env.raw_get::<Value>(call.method)? {
                Value::Function(f) if registered.get::<bool>(f.clone())? => f,
                _ => {
                    return Ok(Err((
                        libc::EOPNOTSUPP,
                        format!("{}: no registered handler {:?}", call.class, call.method),
                    )))
                }
            };
            let input = Bl::create(lua, call.input.to_vec())?;
            let out = Bl::create(lua, Vec::new())?;
            let ret = handler.call::<MultiValue>((input, out.clone()));
            // What the handler appended before failing still goes back (as Ceph's out bl).
            output.extend_from_slice(out.borrow::<Bl>()?.bytes());
            Ok(result_of(ret?.into_iter().next()))
        })
        .map_err(fail)?
    }
}

/// A handler's return value as a result: nothing or nil is 0, an integer (or a number or
/// string holding one) is itself, anything else is -EIO.
fn result_of(v: Option<Value>) -> Result<i32, (i32, String)> {
    let bad = |what: String| {
        Err((
            libc::EIO,
            format!("handler returned {what}, not an integer"),
        ))
    };
    let n = match v {
        None | Some(Value::Nil) => return Ok(0),
        Some(Value::Integer(i)) => i,
        Some(Value::Number(f)) if f.fract() == 0.0 && f.abs() < 1e15 => f as i64,
        Some(Value::String(s)) => match s.to_str().ok().and_then(|s| s.trim().parse().ok()) {
            Some(i) => i,
            None => return bad(format!("the string {:?}", s.to_string_lossy())),
        },
        Some(other) => return bad(format!("a {}", other.type_name())),
    };
    // i32::MIN has no positive errno to go with it.
    i32::try_from(n)
        .ok()
        .filter(|&r| r != i32::MIN)
        .map_or_else(|| bad(format!("{n}, out of range")), Ok)
}

/// The errno and message of an error that ended a call.
fn classify_error(e: &mlua::Error) -> (i32, String) {
    match e {
        mlua::Error::CallbackError { cause, .. } => classify_error(cause),
        mlua::Error::ExternalError(inner) => match inner.downcast_ref::<ClsError>() {
            Some(c) => (c.errno, c.message.clone()),
            None => match inner.downcast_ref::<mlua::Error>() {
                Some(e) => classify_error(e),
                None => (libc::EIO, inner.to_string()),
            },
        },
        mlua::Error::MemoryError(m) => (libc::ENOMEM, m.clone()),
        other => (libc::EIO, other.to_string()),
    }
}

/// For the pcall wrapper: (fatal, errno or nil, message). Fatal errors are tripped limits,
/// which pcall must not swallow.
fn classify_value(err: &Value) -> (bool, Option<i32>, String) {
    if BUDGET.with(|b| b.tripped.get().is_some()) {
        return (true, None, String::new());
    }
    match err {
        Value::Error(e) => {
            let (errno, message) = classify_error(e);
            let is_storage = !matches!(**e, mlua::Error::RuntimeError(_));
            if errno == libc::ENOMEM {
                BUDGET.with(|b| b.tripped.set(Some(Trip::Memory)));
                return (true, None, message);
            }
            (false, is_storage.then_some(errno), message)
        }
        Value::String(s) if s.as_bytes().as_ref() == b"not enough memory" => {
            BUDGET.with(|b| b.tripped.set(Some(Trip::Memory)));
            (true, None, String::new())
        }
        _ => (false, None, String::new()),
    }
}

/// pcall and xpcall over the real pcall: storage errors become `false, -errno, message`;
/// tripped limits are raised again.
const PCALL: &str = r#"
local real_pcall, classify, pack, unpack = ...
local function settle(r, handler)
  if r[1] then return unpack(r, 1, r.n) end
  local fatal, errno, msg = classify(r[2])
  if fatal then error(r[2], 0) end
  if errno then
    if handler then return false, handler(-errno, msg) end
    return false, -errno, msg
  end
  if handler then return false, handler(r[2]) end
  return false, r[2]
end
local function pcall(f, ...) return settle(pack(real_pcall(f, ...))) end
local function xpcall(f, handler, ...) return settle(pack(real_pcall(f, ...)), handler) end
return pcall, xpcall
"#;
