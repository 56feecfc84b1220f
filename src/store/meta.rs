//! `Meta`: the transactional key-value interface every record of a store lives on, and the
//! only thing a metadata engine has to provide.
//!
//! Keys live in families (`schema::Cf`), each an ordered keyspace of byte strings. Reads are
//! `get` (with the key's version), `multi_get` and ordered range scans. Writes are gathered
//! in a `Writes` batch and committed once: all of them or none, and only if every checked key
//! still has the version the operation read (0: the key is absent). That is optimistic
//! concurrency: a store shared by several mounts detects that another mount changed what an
//! operation read, and the operation runs again (`Outcome::Conflict`).
//!
//! Engines:
//! - RocksDB (`rocks.rs`, the embedded default): one write batch. One process owns the store
//!   (RocksDB's LOCK file) and core's per-inode locks order its writers, so nothing changes
//!   between a read and the commit: every version is 0 and checks always hold.
//! - etcd (the shared backend): one `Txn` whose compares are the checked keys' mod_revisions.
//!
//! The same calls fit TiKV (an optimistic transaction whose read set is the checked keys, read
//! `for update`) and FoundationDB (a transaction's read conflict ranges): a further engine is
//! another implementation of these two traits, with no change to core.

use super::schema::Cf;
use crate::error::Result;

/// A key's version: on a shared engine the revision of its last write; 0 for an absent key,
/// and for every key on an engine whose commits need no checks.
pub type Version = u64;

/// What became of a commit.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every write happened.
    Done,
    /// A checked key had changed: nothing was written.
    Conflict,
}

/// Called with each (key, value) of a scan, in key order; returns false to stop.
pub type Each<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// Told of each key another process changed (`None`: changes were missed, assume anything
/// changed). Runs on a thread of its own, never inside an operation.
pub type Changed = dyn Fn(Option<(Cf, &[u8])>) + Send + Sync;

/// Called with each (index asked, value found) of a `multi_get`.
pub type Found<'a> = dyn FnMut(usize, Option<&[u8]>) -> Result<()> + 'a;

pub trait Meta: Send + Sync {
    /// The value under `key` and its version.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>>;

    /// The value under `key` as last committed by anyone, and its version: an engine that
    /// caches reads asks the engine itself, and afterwards serves nothing older for what was
    /// committed with it (close-to-open: an open sees what another mount closed).
    fn get_latest(&self, cf: Cf, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>> {
        self.get(cf, key)
    }

    /// The values of several keys, in the order asked, passed to `each(index, value)`
    /// without copying them.
    fn multi_get(&self, cf: Cf, keys: &[&[u8]], each: &mut Found<'_>) -> Result<()>;

    /// The keys from `from` (inclusive) to `to` (exclusive; None: the family's end), in order.
    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, each: &mut Each<'_>) -> Result<()>;

    /// The family's last key.
    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>>;

    /// A new, empty batch of writes.
    fn writes(&self) -> Box<dyn Writes + '_>;

    /// A new batch apart from the operation running on this thread (a counter reservation
    /// inside it): its commit checks only what it is told to.
    fn writes_apart(&self) -> Box<dyn Writes + '_> {
        self.writes()
    }

    /// One attempt of an operation begins on this thread: an engine that caches reads checks,
    /// at the operation's commits, every cached value it was served meanwhile.
    fn begin_operation(&self) -> u64 {
        0
    }

    /// The attempt begun with `begin_operation` is over.
    fn end_operation(&self, _operation: u64) {}

    /// Makes every committed batch durable against power loss.
    fn sync(&self) -> Result<()>;

    /// Clean shutdown: whatever the engine keeps only in memory or logs goes to its files.
    fn flush(&self) -> Result<()>;

    /// Bytes the engine holds, roughly.
    fn approximate_size(&self) -> u64;

    /// The engine, as users name it (`rocksdb`, `etcd://H:P/NAME`).
    fn describe(&self) -> String;

    /// Requests sent to the engine's servers so far (0: an engine in this process).
    fn requests(&self) -> u64 {
        0
    }

    /// Registers `id` as a live session of the store for as long as this process lives
    /// (on etcd, a key under a lease that expires without this process' renewals).
    fn register_session(&self, _id: &[u8]) -> Result<()> {
        Ok(())
    }

    /// How many sessions of other processes are alive (mounts elsewhere).
    fn other_sessions(&self, _own: &[u8]) -> Result<usize> {
        Ok(0)
    }

    /// Whether session `id` (of another process) is still alive. An engine only one process
    /// opens at a time has no other live sessions.
    fn session_alive(&self, _id: &[u8]) -> Result<bool> {
        Ok(false)
    }

    /// Whether this process is the store's leader: the one process that delivers events and
    /// runs background work. Asking the first time enters the election; an engine only one
    /// process opens always answers yes.
    fn leads(&self) -> bool {
        true
    }

    /// From now on, tells `changed` of every key other processes change. An engine only one
    /// process writes has nothing to tell.
    fn watch(&self, _changed: std::sync::Arc<Changed>) -> Result<()> {
        Ok(())
    }
}

/// One atomic batch: writes apply in the order given (a put after a range delete survives).
pub trait Writes {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]);
    fn delete(&mut self, cf: Cf, key: &[u8]);
    /// Deletes the keys from `from` (inclusive) to `to` (exclusive).
    fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]);
    /// The commit happens only if `key` still has `version`.
    fn check(&mut self, cf: Cf, key: &[u8], version: Version);
    fn commit(self: Box<Self>) -> Result<Outcome>;
}
