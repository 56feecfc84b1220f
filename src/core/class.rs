//! Object classes and Lua packages as stored in the store: validation of names and sources,
//! put/get/list/remove, and the in-memory cache that hands handlers the current version.
//!
//! A class is stored whole under its name and replaced atomically: a put compiles the new
//! source first (a syntax error is refused and nothing changes), commits it, then swaps the
//! cached `Script` under a write lock with a new generation, so every later call compiles
//! and runs the new version and no call sees half of one. Packages are pure-Lua modules
//! stored per (package, version, module); `require "json"` loads the newest version's
//! `json` module, `require "json.util"` its `json.util` module.

use std::cmp::Ordering as CmpOrdering;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::Core;
use crate::error::{Error, Result};
use crate::lua::{Engine, Modules, Script};

/// Longest class, package, module or version name.
const MAX_NAME: usize = 128;

/// One installed module of a package.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleId {
    pub package: String,
    pub version: String,
    pub module: String,
}

#[derive(Default)]
pub struct Registry {
    classes: RwLock<HashMap<String, Arc<Script>>>,
    /// Module name -> newest installed version; emptied on every package change. Only
    /// modules that exist: names required in vain (any caller can) must not grow it.
    modules: RwLock<HashMap<String, Arc<Script>>>,
    generation: AtomicU64,
}

impl Registry {
    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Forgets every cached class and module (another mount changed them).
    pub(super) fn clear(&self) {
        self.classes.write().clear();
        self.modules.write().clear();
    }
}

/// Class names and package names: letters, digits, `_` and `-`, as in a file name.
pub fn check_class_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "class or package name {name:?}: use letters, digits, '_' and '-' (at most {MAX_NAME})"
        )))
    }
}

/// A name a class may be stored under: a valid name, and not `lua`, which means Ceph's
/// built-in eval methods.
pub fn check_new_class(name: &str) -> Result<()> {
    check_class_name(name)?;
    if name == super::ceph::CLASS {
        return Err(Error::InvalidArgument(format!(
            "class name {name:?} is reserved for Ceph's lua.eval_json and lua.eval_bufferlist"
        )));
    }
    Ok(())
}

/// A module name: the package name, optionally followed by `.submodule` parts.
fn check_module(package: &str, module: &str) -> Result<()> {
    let in_package = module == package
        || module
            .strip_prefix(package)
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1);
    let ok = in_package
        && module.len() <= MAX_NAME
        && module
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "module {module:?} of package {package:?}: must be {package} or {package}.NAME"
        )))
    }
}

fn check_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.len() <= MAX_NAME
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "package version {version:?}: use letters, digits and . _ + -"
        )))
    }
}

/// Version order: dot-separated parts, numeric parts compared as numbers ("1.10" > "1.9").
pub fn compare_versions(a: &str, b: &str) -> CmpOrdering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return CmpOrdering::Equal,
            (None, Some(_)) => return CmpOrdering::Less,
            (Some(_), None) => return CmpOrdering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(m), Ok(n)) => m.cmp(&n),
                    _ => p.cmp(q),
                };
                if o != CmpOrdering::Equal {
                    return o;
                }
            }
        }
    }
}

impl Core {
    /// Stores class `name`, replacing any earlier version; a syntax error refuses it.
    pub fn class_put(&self, name: &str, source: &[u8]) -> Result<()> {
        check_new_class(name)?;
        Engine::check(name, source)?;
        let mut classes = self.registry.classes.write();
        let mut batch = self.store.batch();
        batch.put_class(name, source);
        batch.commit()?;
        classes.insert(
            name.to_string(),
            Arc::new(Script {
                name: name.to_string(),
                generation: self.registry.next_generation(),
                source: source.into(),
            }),
        );
        tracing::info!(class = name, bytes = source.len(), "class stored");
        Ok(())
    }

    /// The current version of class `name`, or None.
    pub fn class(&self, name: &str) -> Result<Option<Arc<Script>>> {
        if let Some(c) = self.registry.classes.read().get(name) {
            return Ok(Some(c.clone()));
        }
        let mut classes = self.registry.classes.write();
        if let Some(c) = classes.get(name) {
            return Ok(Some(c.clone()));
        }
        // Only classes that exist are cached: names asked for in vain (any user can ask)
        // must not grow the cache.
        let Some(source) = self.store.class(name)? else {
            return Ok(None);
        };
        let script = Arc::new(Script {
            name: name.to_string(),
            generation: self.registry.next_generation(),
            source: source.into(),
        });
        classes.insert(name.to_string(), script.clone());
        Ok(Some(script))
    }

    pub fn class_names(&self) -> Result<Vec<String>> {
        self.store.class_names()
    }

    pub fn class_remove(&self, name: &str) -> Result<()> {
        let mut classes = self.registry.classes.write();
        if self.store.class(name)?.is_none() {
            return Err(Error::NotFound(format!("class {name}")));
        }
        let mut batch = self.store.batch();
        batch.delete_class(name);
        batch.commit()?;
        classes.remove(name);
        tracing::info!(class = name, "class removed");
        Ok(())
    }

    /// Installs one module of a package version (replacing the same module of that version).
    pub fn package_put(&self, id: &ModuleId, source: &[u8]) -> Result<()> {
        check_class_name(&id.package)?;
        check_version(&id.version)?;
        check_module(&id.package, &id.module)?;
        Engine::check(&format!("{}@{}", id.module, id.version), source)?;
        let mut modules = self.registry.modules.write();
        let mut batch = self.store.batch();
        batch.put_package(&id.package, &id.version, &id.module, source);
        batch.commit()?;
        modules.clear();
        tracing::info!(package = %id.package, version = %id.version, module = %id.module, "module installed");
        Ok(())
    }

    /// Every installed module, in (package, version, module) order.
    pub fn packages(&self) -> Result<Vec<ModuleId>> {
        Ok(self
            .store
            .packages()?
            .into_iter()
            .map(|((package, version, module), _)| ModuleId {
                package,
                version,
                module,
            })
            .collect())
    }

    /// The source of one installed module.
    pub fn package_source(&self, id: &ModuleId) -> Result<Vec<u8>> {
        self.store
            .packages()?
            .into_iter()
            .find(|((p, v, m), _)| *p == id.package && *v == id.version && *m == id.module)
            .map(|(_, source)| source)
            .ok_or_else(|| Error::NotFound(format!("module {}@{}", id.module, id.version)))
    }

    /// Removes the modules of `package` matching `version` and `module` (None: all);
    /// returns how many were removed (ENOENT if none matched).
    pub fn package_remove(
        &self,
        package: &str,
        version: Option<&str>,
        module: Option<&str>,
    ) -> Result<usize> {
        let mut modules = self.registry.modules.write();
        let doomed: Vec<ModuleId> = self
            .packages()?
            .into_iter()
            .filter(|m| {
                m.package == package
                    && version.is_none_or(|v| v == m.version)
                    && module.is_none_or(|x| x == m.module)
            })
            .collect();
        if doomed.is_empty() {
            return Err(Error::NotFound(format!(
                "package {package}{}",
                version.map(|v| format!(" version {v}")).unwrap_or_default()
            )));
        }
        let mut batch = self.store.batch();
        for m in &doomed {
            batch.delete_package(&m.package, &m.version, &m.module);
        }
        batch.commit()?;
        modules.clear();
        Ok(doomed.len())
    }

    /// The newest installed version of module `name`.
    fn module(&self, name: &str) -> Result<Option<Arc<Script>>> {
        if let Some(m) = self.registry.modules.read().get(name) {
            return Ok(Some(m.clone()));
        }
        let mut modules = self.registry.modules.write();
        let package = name.split('.').next().unwrap_or(name);
        let newest = self
            .store
            .packages()?
            .into_iter()
            .filter(|((p, _, m), _)| p == package && m == name)
            .max_by(|((_, a, _), _), ((_, b, _), _)| compare_versions(a, b));
        let Some(((_, version, module), source)) = newest else {
            return Ok(None);
        };
        let script = Arc::new(Script {
            name: format!("{module}@{version}"),
            generation: self.registry.next_generation(),
            source: source.into(),
        });
        modules.insert(name.to_string(), script.clone());
        Ok(Some(script))
    }
}

/// `require` for handlers: the store's packages.
pub(super) struct StoreModules<'a>(pub &'a Core);

impl Modules for StoreModules<'_> {
    fn module(&self, name: &str) -> Result<Option<Script>> {
        Ok(self.0.module(name)?.map(|s| (*s).clone()))
    }
}

impl Core {
    /// Runs a notification or background script (for the dispatcher), with `require` of
    /// installed packages and the handlers' limits; Err is the script's error message.
    pub fn run_script(
        &self,
        run: &crate::lua::NotifyRun<'_>,
        notifier: &mut dyn crate::lua::Notifier,
    ) -> std::result::Result<(), String> {
        self.engine.notify(run, notifier, &StoreModules(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically_by_part() {
        assert_eq!(compare_versions("1.10", "1.9"), CmpOrdering::Greater);
        assert_eq!(compare_versions("2.0", "2.0.1"), CmpOrdering::Less);
        assert_eq!(
            compare_versions("1.0-beta", "1.0-alpha"),
            CmpOrdering::Greater
        );
        assert_eq!(compare_versions("3", "3"), CmpOrdering::Equal);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_class_name("md5").is_ok());
        assert!(check_class_name("thumb-v2").is_ok());
        assert!(check_class_name("../x").is_err());
        assert!(check_class_name("").is_err());
        assert!(check_module("json", "json").is_ok());
        assert!(check_module("json", "json.util").is_ok());
        assert!(check_module("json", "jsonx").is_err());
        assert!(check_module("json", "json.").is_err());
        assert!(check_version("1.2.3-rc1").is_ok());
        assert!(check_version("1/2").is_err());
    }
}
