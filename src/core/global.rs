//! The global table of notification and background scripts (Ceph RGW's `RGW` table): string,
//! number and boolean values under string keys, stored in the `global` column family so they
//! survive restarts. Every change is one small commit under one lock, so `add` (increment,
//! decrement) is atomic. Limits keep a runaway script from filling the store.

use parking_lot::Mutex;

use super::Core;
use crate::error::{Error, Result};
use crate::lua::TableValue;

/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest string value, in bytes.
pub const MAX_VALUE: usize = 64 << 10;
/// Most entries the table holds.
pub const MAX_ENTRIES: usize = 100_000;

/// Serializes changes; holds the entry count once known.
#[derive(Default)]
pub struct Global(Mutex<Option<usize>>);

fn encode(v: &TableValue) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        TableValue::Str(s) => {
            out.push(b's');
            out.extend_from_slice(s);
        }
        TableValue::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(&i.to_be_bytes());
        }
        TableValue::Num(n) => {
            out.push(b'n');
            out.extend_from_slice(&n.to_bits().to_be_bytes());
        }
        TableValue::Bool(b) => out.extend_from_slice(&[b'b', u8::from(*b)]),
    }
    out
}

fn decode(v: &[u8]) -> Result<TableValue> {
    let bad = || Error::Corrupt("global table value".into());
    let (&tag, rest) = v.split_first().ok_or_else(bad)?;
    let eight = || -> Result<[u8; 8]> { rest.try_into().map_err(|_| bad()) };
    Ok(match tag {
        b's' => TableValue::Str(rest.to_vec()),
        b'i' => TableValue::Int(i64::from_be_bytes(eight()?)),
        b'n' => TableValue::Num(f64::from_bits(u64::from_be_bytes(eight()?))),
        b'b' => TableValue::Bool(rest.first() == Some(&1)),
        _ => return Err(bad()),
    })
}

impl Core {
    pub fn global_get(&self, key: &str) -> Result<Option<TableValue>> {
        self.store.global_get(key)?.map(|v| decode(&v)).transpose()
    }

    /// Every entry, in key order.
    pub fn global_entries(&self) -> Result<Vec<(String, TableValue)>> {
        self.store
            .global_entries()?
            .into_iter()
            .map(|(k, v)| Ok((k, decode(&v)?)))
            .collect()
    }

    /// Stores (Some) or deletes (None) `key`.
    pub fn global_set(&self, key: &str, value: Option<TableValue>) -> Result<()> {
        let mut count = self.global.0.lock();
        self.global_set_locked(&mut count, key, value)
    }

    /// Adds `delta` to the number at `key` (absent is 0); integers stay integers while the
    /// delta is whole.
    pub fn global_add(&self, key: &str, delta: f64) -> Result<TableValue> {
        let mut count = self.global.0.lock();
        let new = match self.global_get(key)? {
            None if delta.fract() == 0.0 => TableValue::Int(delta as i64),
            None => TableValue::Num(delta),
            Some(TableValue::Int(i)) if delta.fract() == 0.0 => {
                TableValue::Int(i.saturating_add(delta as i64))
            }
            Some(TableValue::Int(i)) => TableValue::Num(i as f64 + delta),
            Some(TableValue::Num(n)) => TableValue::Num(n + delta),
            Some(_) => {
                return Err(Error::InvalidArgument(format!(
                    "RGW[{key:?}] is not a number"
                )))
            }
        };
        self.global_set_locked(&mut count, key, Some(new.clone()))?;
        Ok(new)
    }

    fn global_set_locked(
        &self,
        count: &mut Option<usize>,
        key: &str,
        value: Option<TableValue>,
    ) -> Result<()> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(Error::InvalidArgument(format!(
                "RGW key {key:?}: 1 to {MAX_KEY} bytes"
            )));
        }
        if let Some(TableValue::Str(s)) = &value {
            if s.len() > MAX_VALUE {
                return Err(Error::InvalidArgument(format!(
                    "RGW[{key:?}]: a string of {} bytes; the limit is {MAX_VALUE}",
                    s.len()
                )));
            }
        }
        let n = match *count {
            Some(n) => n,
            None => self.store.global_entries()?.len(),
        };
        let existed = self.store.global_get(key)?.is_some();
        let mut batch = self.store.batch();
        let n = match value {
            Some(v) => {
                if !existed && n >= MAX_ENTRIES {
                    return Err(Error::NoMemory(format!(
                        "RGW[{key:?}]: the global table is full ({MAX_ENTRIES} entries)"
                    )));
                }
                batch.put_global(key, &encode(&v));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for v in [
            TableValue::Str(b"x\0y".to_vec()),
            TableValue::Int(-5),
            TableValue::Num(2.5),
            TableValue::Bool(true),
        ] {
            assert_eq!(decode(&encode(&v)).unwrap(), v);
        }
        assert!(decode(b"").is_err() && decode(b"i12").is_err() && decode(b"?").is_err());
    }
}
