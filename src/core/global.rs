//! The global table of notification and background scripts (Ceph RGW's `RGW` table): string,
//! number and boolean values under string keys, stored in the `global` column family so they
//! survive restarts. Every change is one small commit under one lock, so `add` (increment,
//! decrement) is atomic. Limits keep a runaway script from filling the store.

use parking_lot::Mutex;

use super::Core;
use crate::error::{Error, Result};
use crate::store::codec::events::GlobalValue;
use crate::store::meta::Version;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest string value, in bytes.
pub const MAX_VALUE: usize = 64 << 10;
/// Most entries the table holds.
pub const MAX_ENTRIES: usize = 100_000;

/// Serializes changes; holds the entry count once known.
#[derive(Default)]
pub struct Global(Mutex<Option<usize>>);

impl Core {
    /// Another mount changed the table: its entry count is counted again when needed.
    pub(super) fn global_forget_count(&self) {
        *self.global.0.lock() = None;
    }

    pub fn global_get(&self, key: &str) -> Result<Option<GlobalValue>> {
        self.store.global_get(key)
    }

    /// Every entry, in key order.
    pub fn global_entries(&self) -> Result<Vec<(String, GlobalValue)>> {
        self.store.global_entries()
    }

    /// Stores (Some) or deletes (None) `key`.
    pub fn global_set(&self, key: &str, value: Option<GlobalValue>) -> Result<()> {
        let mut count = self.global.0.lock();
        let existed = self.store.global_get(key)?.is_some();
        self.global_write(&mut count, key, value, None, existed)
    }

    /// Adds `delta` to the number at `key` (absent is 0); integers stay integers while the
    /// delta is whole.
    pub fn global_add(&self, key: &str, delta: f64) -> Result<GlobalValue> {
        let mut count = self.global.0.lock();
        // The read is checked at the commit: increments from several mounts all count.
        self.transact("RGW.increment", || {
            // Counted before the read, so that another mount's increment has as little time
            // as can be to land between the read and the commit.
            self.global_count(&mut count)?;
            let (old, version) = self.store.global_versioned(key)?;
            let new = match old {
                None if delta.fract() == 0.0 => GlobalValue::Int(delta as i64),
                None => GlobalValue::Num(delta),
                Some(GlobalValue::Int(i)) if delta.fract() == 0.0 => {
                    GlobalValue::Int(i.saturating_add(delta as i64))
                }
                Some(GlobalValue::Int(i)) => GlobalValue::Num(i as f64 + delta),
                Some(GlobalValue::Num(n)) => GlobalValue::Num(n + delta),
                Some(_) => {
                    return Err(Error::InvalidArgument(format!(
                        "RGW[{key:?}] is not a number"
                    )))
                }
            };
            let existed = old.is_some();
            self.global_write(&mut count, key, Some(new.clone()), Some(version), existed)?;
            Ok(new)
        })
    }

    /// The table's entry count, counted once and then kept.
    fn global_count(&self, count: &mut Option<usize>) -> Result<usize> {
        if let Some(n) = *count {
            return Ok(n);
        }
        let n = self.store.global_entries()?.len();
        *count = Some(n);
        Ok(n)
    }

    /// Writes `key` (which `existed` or not); with `checked`, only if the key still has that
    /// version.
    fn global_write(
        &self,
        count: &mut Option<usize>,
        key: &str,
        value: Option<GlobalValue>,
        checked: Option<Version>,
        existed: bool,
    ) -> Result<()> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(Error::InvalidArgument(format!(
                "RGW key {key:?}: 1 to {MAX_KEY} bytes"
            )));
        }
        if let Some(GlobalValue::Str(s)) = &value {
            if s.len() > MAX_VALUE {
                return Err(Error::InvalidArgument(format!(
                    "RGW[{key:?}]: a string of {} bytes; the limit is {MAX_VALUE}",
                    s.len()
                )));
            }
        }
        let n = self.global_count(count)?;
        let mut batch = self.store.batch();
        if let Some(version) = checked {
            batch.check_global(key, version);
        }
        let n = match value {
            Some(v) => {
                if !existed && n >= MAX_ENTRIES {
                    return Err(Error::NoMemory(format!(
                        "RGW[{key:?}]: the global table is full ({MAX_ENTRIES} entries)"
                    )));
                }
                batch.put_global(key, &v);
                n + usize::from(!existed)
            }
            None => {
                batch.delete_global(key);
                n - usize::from(existed)
            }
        };
        batch.commit()?;
        *count = Some(n);
        Ok(())
    }
}
