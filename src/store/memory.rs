//! An in-memory `Meta` with a shared engine's semantics, for tests: every commit gets the
//! next revision, a key's version is the revision of its last write, and a commit whose
//! checks do not hold writes nothing (`Outcome::Conflict`). Several `Core`s on clones of one
//! `Memory` behave as several mounts of one shared filesystem, without etcd.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::meta::{Each, Found, Meta, Outcome, Version, Writes};
use super::schema::Cf;
use crate::error::Result;

type Family = BTreeMap<Vec<u8>, (Vec<u8>, Version)>;

#[derive(Default)]
struct State {
    revision: Version,
    families: HashMap<&'static str, Family>,
    commits: u64,
    conflicts: u64,
    /// Commits still to refuse as conflicts whatever their checks (`refuse_commits`).
    refuse: u64,
}

/// Clones share one keyspace.
#[derive(Clone, Default)]
pub struct Memory {
    state: Arc<Mutex<State>>,
}

impl Memory {
    /// (commits done, commits refused for a changed check) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.commits, s.conflicts)
    }

    /// The next `n` commits fail as conflicts (as if another mount kept winning).
    pub fn refuse_commits(&self, n: u64) {
        self.state.lock().refuse = n;
    }

    fn snapshot(&self, cf: Cf, from: &[u8], to: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let s = self.state.lock();
        let Some(family) = s.families.get(cf.name()) else {
            return Vec::new();
        };
        family
            .range(from.to_vec()..)
            .take_while(|(k, _)| to.is_none_or(|to| k.as_slice() < to))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }
}

impl Meta for Memory {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>> {
        let s = self.state.lock();
        Ok(s.families.get(cf.name()).and_then(|f| f.get(key)).cloned())
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]], each: &mut Found<'_>) -> Result<()> {
        for (i, key) in keys.iter().enumerate() {
            let found = self.get(cf, key)?;
            each(i, found.as_ref().map(|(v, _)| v.as_slice()))?;
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, each: &mut Each<'_>) -> Result<()> {
        for (k, v) in self.snapshot(cf, from, to) {
            if !each(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>> {
        let s = self.state.lock();
        Ok(s.families
            .get(cf.name())
            .and_then(|f| f.keys().next_back().cloned()))
    }

    fn writes(&self) -> Box<dyn Writes + '_> {
        Box::new(MemoryWrites {
            memory: self,
            ops: Vec::new(),
            checks: Vec::new(),
        })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn approximate_size(&self) -> u64 {
        let s = self.state.lock();
        s.families
            .values()
            .flat_map(|f| f.iter())
            .map(|(k, (v, _))| (k.len() + v.len()) as u64)
            .sum()
    }
}

enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

struct MemoryWrites<'a> {
    memory: &'a Memory,
    ops: Vec<Op>,
    checks: Vec<(Cf, Vec<u8>, Version)>,
}

impl Writes for MemoryWrites<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.ops.push(Op::Put(cf, key.to_vec(), value.to_vec()));
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.ops.push(Op::Delete(cf, key.to_vec()));
    }

    fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.ops
            .push(Op::DeleteRange(cf, from.to_vec(), to.to_vec()));
    }

    fn check(&mut self, cf: Cf, key: &[u8], version: Version) {
        self.checks.push((cf, key.to_vec(), version));
    }

    fn commit(self: Box<Self>) -> Result<Outcome> {
        let mut s = self.memory.state.lock();
        let holds = self.checks.iter().all(|(cf, key, version)| {
            let now = s.families.get(cf.name()).and_then(|f| f.get(key));
            now.map_or(0, |(_, v)| *v) == *version
        });
        if !holds || s.refuse > 0 {
            s.refuse = s.refuse.saturating_sub(1);
            s.conflicts += 1;
            return Ok(Outcome::Conflict);
        }
        s.revision += 1;
        s.commits += 1;
        let revision = s.revision;
        for op in self.ops {
            match op {
                Op::Put(cf, k, v) => {
                    s.families
                        .entry(cf.name())
                        .or_default()
                        .insert(k, (v, revision));
                }
                Op::Delete(cf, k) => {
                    s.families.entry(cf.name()).or_default().remove(&k);
                }
                Op::DeleteRange(cf, from, to) if from < to => {
                    let family = s.families.entry(cf.name()).or_default();
                    let doomed: Vec<Vec<u8>> =
                        family.range(from..to).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        family.remove(&k);
                    }
                }
                Op::DeleteRange(..) => {}
            }
        }
        Ok(Outcome::Done)
    }
}
