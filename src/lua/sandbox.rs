//! The one sandbox: how a Lua VM is built, how a call's environment is made, and the limits.
//!
//! Each thread that runs handlers owns one VM (the call pool's threads run calls in
//! parallel, each on its own VM), created on first use with only the `table`, `string`,
//! `math` and `utf8` libraries and a whitelist of base functions (`base`): no `io`, `os`,
//! `debug`, `loadfile`, `dofile`, `coroutine`, `load` of text only, and `require` only of
//! installed packages. The library functions that can run long in C are replaced by Rust
//! ones that keep the limits (`strlib`, `tablib`). Compiled scripts are cached per VM by
//! (name, generation), in text mode only (precompiled bytecode is refused: it can crash
//! the VM).
//!
//! Every call gets a fresh environment table holding copies of the library tables and of
//! the `objclass` table, so nothing one call assigns (a global, `string.foo = ...`,
//! `objclass.read = nil`) is seen by the next. The copies are made by Lua functions the VM
//! generates and compiles once (`copier`): one table constructor per table, sized once,
//! instead of a copying loop. The objclass functions are made once per VM too, and reach
//! the call's object through one dispatcher the call binds (`objclass::Prepared`). The
//! shared string metatable is hidden (`getmetatable("")` is false) and `getmetatable` of
//! a userdata is nil, so no shared table is reachable.
//!
//! Limits, per call (`budget`): a memory budget (Lua heap and, separately, the bytes held
//! by bufferlists and images), an instruction budget and a deadline, checked by a hook every
//! 1000 instructions and by the Rust library functions as they work.
//!
//! Results follow Ceph's cls_lua: the last value the handler returns is its result, as
//! `luaL_checkinteger` reads it (numbers and numeric strings with an integer value, cut to
//! a C `int`); none is 0; anything else (nil included) is -EIO. A method name that is not a
//! function is -EOPNOTSUPP, a function that was not registered -EIO, and an empty method
//! name only runs the chunk (result 0).

use std::cell::RefCell;
use std::collections::HashMap;

use mlua::{
    chunk::ChunkMode, Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value,
    VmState,
};

use super::bufferlist::Bl;
use super::errors::classify as classify_error;
use super::objclass::{self, Site};
use super::{budget, Call, Limits, Modules, Notifier, NotifyRun, Object, Outcome, Script};

/// Base functions every call may use.
const SAFE_GLOBALS: &[&str] = &[
    "assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawlen", "rawset",
    "select", "tonumber", "tostring", "type", "_VERSION",
];

/// Standard libraries every call gets a fresh copy of.
const LIBRARIES: &[&str] = &["string", "table", "math", "utf8"];

/// A Lua function, compiled once per VM, `function(t, n)`: a copy of `t` (which has
/// `template`'s keys) made by one table constructor, `{["k"] = t["k"], ...}`, holding a
/// copy of `n[i]` under the name of `nested[i]`, made the same way. A constructor sizes
/// its table once, where a copying loop would grow and rehash it entry by entry.
fn copier(
    lua: &Lua,
    name: &str,
    template: &Table,
    nested: &[(&str, Table)],
) -> mlua::Result<Function> {
    let mut src = format!(
        "return function(t, n)\nlocal c = {}\n",
        constructor("t", template)?
    );
    for (i, (key, table)) in nested.iter().enumerate() {
        src.push_str(&format!(
            "do local l = n[{}]; c[{}] = {} end\n",
            i + 1,
            quoted(key)?,
            constructor("l", table)?
        ));
    }
    src.push_str("return c\nend\n");
    lua.load(src).set_name(format!("={name}")).call(())
}

/// `{["k"] = VAR["k"], ...}` for every key of `t` (all strings: library and API names).
fn constructor(var: &str, t: &Table) -> mlua::Result<String> {
    let mut fields = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let key = match pair?.0 {
            Value::String(s) => s.to_str()?.to_string(),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "a {} key in a library",
                    other.type_name()
                )))
            }
        };
        let key = quoted(&key)?;
        fields.push(format!("[{key}] = {var}[{key}]"));
    }
    Ok(format!("{{{}}}", fields.join(", ")))
}

/// `key` as a Lua string literal; names are plain identifiers, anything else is refused.
fn quoted(key: &str) -> mlua::Result<String> {
    match key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        true => Ok(format!("\"{key}\"")),
        false => Err(mlua::Error::runtime(format!("library key {key:?}"))),
    }
}

/// How often the limit hook runs, in VM instructions.
const HOOK_EVERY: u32 = 1000;

/// Compiled scripts kept per VM before the cache is emptied.
const MAX_COMPILED: usize = 256;

thread_local! {
    static VM: RefCell<Option<Vm>> = const { RefCell::new(None) };
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
    /// The real library tables, then `bufferlist`, `digest`, `image`, `cmsgpack` (made
    /// once), as a sequence in `fresh`'s order: copied into each call's environment.
    libraries: Table,
    /// What each call's `objclass` is a copy of, bound to the call's object (`bind`).
    objclass: objclass::Prepared,
    /// `(base, libraries)` -> a call's environment (`copier`).
    fresh: Function,
    /// `objclass.template` -> the call's `objclass` table.
    fresh_objclass: Function,
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
            vm.limited(limits, None, |vm| {
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
            |_, _| match budget::keep_going(HOOK_EVERY) {
                true => Ok(VmState::Continue),
                false => Err(budget::limit_error()),
            },
        )?;
        let globals = lua.globals();
        super::strlib::install(&lua, &globals.get("string")?)?;
        super::tablib::install(&lua, &globals.get("table")?)?;
        let base = lua.create_table()?;
        for name in SAFE_GLOBALS {
            base.set(*name, globals.get::<Value>(*name)?)?;
        }
        super::base::install(&lua, &base, &globals)?;
        let mut named = Vec::new();
        for name in LIBRARIES {
            named.push((*name, globals.get::<Table>(*name)?));
        }
        named.push(("bufferlist", super::bufferlist::module(&lua)?));
        named.push(("digest", super::digest::module(&lua)?));
        named.push(("image", super::image::module(&lua)?));
        named.push(("cmsgpack", super::msgpack::module(&lua)?));
        let fresh = copier(&lua, "environment", &base, &named)?;
        let libraries = lua.create_sequence_from(named.into_iter().map(|(_, t)| t))?;
        let objclass = objclass::prepare(&lua)?;
        let fresh_objclass = copier(&lua, "objclass", &objclass.template, &[])?;
        Ok(Vm {
            lua,
            base,
            libraries,
            objclass,
            fresh,
            fresh_objclass,
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
        let env: Table = self.fresh.call((&self.base, &self.libraries))?;
        env.raw_set("_G", &env)?;
        self.lua
            .set_named_registry_value(super::base::ENV_KEY, &env)?;
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
        match self.limited(limits, call.caller, |vm| {
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

    /// Runs `f` under `limits` for `caller`. The outer error is a tripped limit (whatever
    /// `f` returned), the inner one `f`'s own.
    #[allow(clippy::type_complexity)]
    fn limited<T>(
        &mut self,
        limits: Limits,
        caller: Option<u32>,
        f: impl FnOnce(&mut Self) -> Result<T, (i32, String)>,
    ) -> Result<Result<T, (i32, String)>, (i32, String)> {
        let baseline = self.lua.used_memory();
        let _ = self
            .lua
            .set_memory_limit(baseline.saturating_add(limits.memory));
        budget::start(&limits, caller, baseline);
        let result = f(self);
        let tripped = budget::finish();
        let _ = self.lua.set_memory_limit(0);
        // Dead bufferlists are invisible to Lua's GC pacing (their bytes are not on the Lua
        // heap): collect when they hold much, and after a call that hit a limit.
        if tripped.is_some() || budget::held() > (4 << 20) {
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
            super::nats::install(lua, scope, &env, &notifier, name)?;
            if let Some(event) = run.event {
                env.raw_set("event", super::nats::json_to_lua(lua, event)?)?;
            }
            if let Some(json) = run.event_json {
                env.raw_set("event_json", json)?;
            }
            if let Some(topic) = run.topic {
                env.raw_set("topic", super::nats::json_to_lua(lua, topic)?)?;
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
        let registered = lua.create_table().map_err(fail)?;
        let bound = objclass::Bound {
            object: &object,
            site: &site,
            registered: registered.clone(),
        };
        lua.scope(|scope| {
            let env = self.environment()?;
            self.objclass.bind(scope, &bound)?;
            let cls: Table = self.fresh_objclass.call(&self.objclass.template)?;
            env.raw_set("objclass", &cls)?;
            env.raw_set("cls", &cls)?;
            env.raw_set("print", cls.raw_get::<Function>("log")?)?;
            self.install_require(scope, &env, modules)?;
            main.set_environment(env.clone())?;
            main.call::<()>(())?;
            let handler = match handler(&env, &registered, call)? {
                Ok(f) => f,
                Err(refused) => return Ok(Err(refused)),
            };
            let Some(handler) = handler else {
                return Ok(Ok(0));
            };
            let input = Bl::create(lua, call.input.to_vec())?;
            let out = Bl::create(lua, Vec::new())?;
            let ret = handler.call::<MultiValue>((input, out.clone()));
            // What the handler appended before failing still goes back (as Ceph's out bl).
            output.extend_from_slice(out.borrow::<Bl>()?.bytes());
            Ok(result_of(lua, ret?.into_iter().last()))
        })
        .map_err(fail)?
    }
}

/// The handler `call` names, once the chunk has run: None for an empty name (Ceph's eval
/// then only runs the chunk); a name that is not a function is -EOPNOTSUPP; a function that
/// was not registered (or was replaced after registering) is -EIO.
#[allow(clippy::type_complexity)]
fn handler(
    env: &Table,
    registered: &Table,
    call: &Call<'_>,
) -> mlua::Result<Result<Option<Function>, (i32, String)>> {
    if call.method.is_empty() {
        return Ok(Ok(None));
    }
    let f = match env.get::<Value>(call.method)? {
        Value::Function(f) => f,
        _ => {
            return Ok(Err((
                libc::EOPNOTSUPP,
                format!("{}: no handler function {:?}", call.class, call.method),
            )))
        }
    };
    if !registered.contains_key(f.clone())? {
        return Ok(Err((
            libc::EIO,
            format!(
                "{}: handler {:?} is not registered",
                call.class, call.method
            ),
        )));
    }
    Ok(Ok(Some(f)))
}

/// A handler's last return value as its result, as Ceph reads it (`luaL_checkinteger`,
/// then stored in a C `int`): none is 0; an integer, a float with an integer value or a
/// string holding one ("0x10", "1e2", " 3 ") is itself, cut to 32 bits; anything else,
/// nil included, is -EIO.
fn result_of(lua: &Lua, v: Option<Value>) -> Result<i32, (i32, String)> {
    let Some(v) = v else {
        return Ok(0);
    };
    match lua.coerce_integer(v.clone()) {
        // C's conversion to int keeps the low 32 bits.
        Ok(Some(n)) => Ok(n as i32),
        _ => Err((
            libc::EIO,
            format!(
                "handler returned {}, not an integer",
                match &v {
                    Value::String(s) => format!("the string {:?}", s.to_string_lossy()),
                    other => format!("a {}", other.type_name()),
                }
            ),
        )),
    }
}
