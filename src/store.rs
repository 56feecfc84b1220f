//! The store: one RocksDB per STORE directory, opened with the column families of `schema`,
//! read through typed getters here and written only through a `Batch` (one per mutating
//! operation, one commit).
//!
//! Knows bytes and records, not filesystem semantics: it never decides whether an operation is
//! allowed, it only reads and writes what `core` asks for.

//! The store: a filesystem's records, read through the typed getters here and written only
//! through a `Batch` (one per mutating operation, one commit), on two engines behind narrow
//! interfaces: `meta::Meta` (transactional key-value: every record) and `data::Data` (file
//! bytes). The embedded store is RocksDB for both (`rocks.rs`, `data/inline.rs`).
//!
//! Knows bytes and records, not filesystem semantics: it never decides whether an operation is
//! allowed, it only reads and writes what `core` asks for.

pub mod batch;
pub mod codec;
pub mod data;
pub mod etcd;
pub mod keys;
pub mod location;
pub mod memory;
pub mod meta;
pub mod rados;
pub mod rocks;
pub mod schema;

use std::path::{Path, PathBuf};

pub use batch::Batch;
use codec::events::{EtagRecord, GlobalValue, QueuedEvent};
use codec::{decode_blob, Dentry, Inode};
use data::{Checked, Data, Owner};
use keys::Ino;
use meta::{Meta, Version};
use schema::{Cf, CHUNK_SIZE, SCHEMA_VERSION};

use crate::error::{Error, Result};

/// (package, version, module) of an installed Lua module.
pub type PackageKey = (String, String, String);

/// The daemon's log when mounted in the background; the only file a fresh store directory
/// may already hold.
pub const LOG_FILE: &str = "lunafs.log";

/// An operation's attempt running on this thread; ends when dropped.
pub struct Operation<'a> {
    meta: &'a dyn Meta,
    id: u64,
}

impl Drop for Operation<'_> {
    fn drop(&mut self) {
        self.meta.end_operation(self.id);
    }
}

pub struct Store {
    meta: Box<dyn Meta>,
    data: Box<dyn Data>,
    path: PathBuf,
    /// This opening of the store: a random id, the owner of the orphans it records.
    session: Vec<u8>,
}

impl Store {
    /// Opens the embedded store at `path`, creating the database if the directory is missing
    /// or empty. Refuses a directory that holds something else, and a store another process
    /// has open. A new store has no schema record until `core` writes it together with the
    /// root inode (`Batch::put_schema`), so a crash during creation leaves a store that opens
    /// as new.
    pub fn open(path: &Path) -> Result<Store> {
        Store::with_engines(
            Box::new(rocks::Rocks::open(path)?),
            Box::new(data::inline::Inline),
            path,
        )
    }

    /// A store on the given engines; `path` names it in messages (and is where `statfs`
    /// looks for capacity).
    pub fn with_engines(meta: Box<dyn Meta>, data: Box<dyn Data>, path: &Path) -> Result<Store> {
        let store = Store {
            meta,
            data,
            path: path.to_owned(),
            session: crate::digest::hex(&crate::digest::random_bytes()?).into_bytes(),
        };
        store.check_schema()?;
        store.meta.register_session(&store.session)?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        let not_ours = |why: String| Error::NotAStore {
            path: self.path.clone(),
            why,
        };
        match self.get(Cf::Meta, keys::META_SCHEMA)? {
            None if self.max_ino()? == 0 => Ok(()), // created, not yet initialized
            None => Err(not_ours("no lunafs schema record".into())),
            Some(v) if v.as_slice() == SCHEMA_VERSION.to_be_bytes() => {
                match self.get(Cf::Meta, keys::META_CHUNK_SIZE)? {
                    Some(c) if c.as_slice() == CHUNK_SIZE.to_be_bytes() => Ok(()),
                    other => Err(not_ours(format!(
                        "it was created with chunk size {:?}, this lunafs uses {CHUNK_SIZE}",
                        other.and_then(|c| keys::decode_inode(&c))
                    ))),
                }
            }
            Some(v) => Err(not_ours(format!(
                "schema version {v:?} is not the supported {SCHEMA_VERSION}"
            ))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch::new(self, self.meta.writes())
    }

    /// A batch apart from the operation running on this thread (see `Meta::writes_apart`).
    pub fn batch_apart(&self) -> Batch<'_> {
        Batch::new(self, self.meta.writes_apart())
    }

    /// One attempt of an operation, until the guard is dropped (see `Meta::begin_operation`).
    pub fn operation(&self) -> Operation<'_> {
        Operation {
            meta: &*self.meta,
            id: self.meta.begin_operation(),
        }
    }

    pub(crate) fn meta(&self) -> &dyn Meta {
        &*self.meta
    }

    pub(crate) fn data(&self) -> &dyn Data {
        &*self.data
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(cf, key)?.map(|(v, _)| v))
    }

    pub fn inode(&self, ino: Ino) -> Result<Option<Inode>> {
        Ok(self.inode_versioned(ino)?.map(|(inode, _)| inode))
    }

    /// The inode and the version its record has (for a transaction's checks).
    pub fn inode_versioned(&self, ino: Ino) -> Result<Option<(Inode, Version)>> {
        match self.meta.get(Cf::Inodes, &keys::inode(ino))? {
            Some((v, version)) => Ok(Some((Inode::decode(ino, &v)?, version))),
            None => Ok(None),
        }
    }

    /// The inode as last committed by any mount; afterwards, reads of what it owns are at
    /// least as new (see `Meta::get_latest`).
    pub fn inode_latest(&self, ino: Ino) -> Result<Option<Inode>> {
        match self.meta.get_latest(Cf::Inodes, &keys::inode(ino))? {
            Some((v, _)) => Ok(Some(Inode::decode(ino, &v)?)),
            None => Ok(None),
        }
    }

    pub fn dentry(&self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        match self.get(Cf::Dentries, &keys::named(parent, name))? {
            Some(v) => Ok(Some(Dentry::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every entry of a directory, in name order.
    pub fn dentries(&self, parent: Ino) -> Result<Vec<(Vec<u8>, Dentry)>> {
        let mut out = Vec::new();
        self.scan_named(Cf::Dentries, parent, &mut |name, v| {
            out.push((name.to_vec(), Dentry::decode(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn has_dentries(&self, parent: Ino) -> Result<bool> {
        let mut any = false;
        self.scan_named(Cf::Dentries, parent, &mut |_, _| {
            any = true;
            Ok(false)
        })?;
        Ok(any)
    }

    /// Calls `f(name, value)` for each key of `owner` in `cf`, in order, while it returns true.
    fn scan_named(&self, cf: Cf, owner: Ino, f: &mut meta::Each<'_>) -> Result<()> {
        let (lo, hi) = keys::named_range(owner);
        self.meta.scan(cf, &lo, Some(&hi), &mut |k, v| {
            let (_, name) = keys::decode_named(k)
                .ok_or_else(|| Error::Corrupt(format!("short key in {}", cf.name())))?;
            f(name, v)
        })
    }

    /// Bytes `offset..end` of file `ino` (end within its size); holes read as zeros.
    pub fn read(&self, ino: Ino, offset: u64, end: u64) -> Result<Vec<u8>> {
        self.data.read(&*self.meta, ino, offset, end)
    }

    /// fsck: every unit of stored data checked against its inode.
    pub fn check_data(&self, owner: &dyn Fn(Ino) -> Owner) -> Result<Checked> {
        self.data.check(&*self.meta, owner)
    }

    pub fn omap_get(&self, ino: Ino, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.blob(Cf::Omap, ino, key)
    }

    pub fn xattr_get(&self, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.blob(Cf::Xattrs, ino, name)
    }

    fn blob(&self, cf: Cf, ino: Ino, name: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_blob(cf, &keys::named(ino, name))
    }

    /// The decoded blob value stored under `key` in `cf`.
    fn get_blob(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.get(cf, key)? {
            Some(v) => Ok(Some(decode_blob(&v)?.to_vec())),
            None => Ok(None),
        }
    }

    /// The omap keys of `ino`, in order.
    pub fn omap_keys(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.names(Cf::Omap, ino)
    }

    /// The non-`user.` xattr names of `ino`, in order.
    pub fn xattr_names(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.names(Cf::Xattrs, ino)
    }

    fn names(&self, cf: Cf, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.scan_named(cf, ino, &mut |name, _| {
            // Names starting with NUL are lunafs's own records (the omap header).
            if name.first() != Some(&0) {
                out.push(name.to_vec());
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every omap entry of `ino`, in key order.
    pub fn omap_entries(&self, ino: Ino) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.entries(Cf::Omap, ino)
    }

    /// Every non-`user.` xattr of `ino` with its value, in name order.
    pub fn xattr_entries(&self, ino: Ino) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.entries(Cf::Xattrs, ino)
    }

    fn entries(&self, cf: Cf, ino: Ino) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan_named(cf, ino, &mut |name, v| {
            if name.first() != Some(&0) {
                out.push((name.to_vec(), decode_blob(v)?.to_vec()));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// The omap header of `ino`, if one was written.
    pub fn omap_header(&self, ino: Ino) -> Result<Option<Vec<u8>>> {
        self.blob(Cf::Xattrs, ino, keys::OMAP_HEADER)
    }

    /// The source of class `name`.
    pub fn class(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.get_blob(Cf::Classes, &keys::class(name))
    }

    /// The names of all classes, in order.
    pub fn class_names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.scan(Cf::Classes, &mut |k, _| {
            out.push(String::from_utf8_lossy(k).into_owned());
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every installed module: (package, version, module) and its source, in key order.
    pub fn packages(&self) -> Result<Vec<(PackageKey, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan(Cf::Packages, &mut |k, v| {
            let id = keys::decode_package(k)
                .ok_or_else(|| Error::Corrupt(format!("package key {k:?}")))?;
            out.push((id, decode_blob(v)?.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// A reserve-ahead counter's high-water mark (0 if none was reserved yet), with the
    /// version its record has.
    pub fn reserved(&self, counter: &[u8]) -> Result<(u64, Version)> {
        match self.meta.get(Cf::Meta, counter)? {
            Some((v, version)) => Ok((
                keys::decode_counter(&v)
                    .ok_or_else(|| Error::Corrupt("counter reservation record".into()))?,
                version,
            )),
            None => Ok((0, 0)),
        }
    }

    /// The inode-number high-water mark (0 if none was reserved yet).
    pub fn ino_reserved(&self) -> Result<Ino> {
        Ok(self.reserved(keys::META_INO_RESERVED)?.0)
    }

    /// The event-sequence high-water mark (0 if none was reserved yet).
    pub fn event_reserved(&self) -> Result<u64> {
        Ok(self.reserved(keys::META_EVENT_RESERVED)?.0)
    }

    /// Whether every inode record carries its name (see `keys::META_INODE_NAMES`).
    pub fn inode_names_done(&self) -> Result<bool> {
        Ok(self.get(Cf::Meta, keys::META_INODE_NAMES)?.is_some())
    }

    /// The store's random id, once made.
    pub fn store_id(&self) -> Result<Option<Vec<u8>>> {
        self.get(Cf::Meta, keys::META_STORE_ID)
    }

    /// Up to `max` queued events with sequence numbers >= `from`, in order, each decoded
    /// (or the error that made it undecodable: it can never be delivered).
    pub fn events(&self, from: u64, max: usize) -> Result<Vec<(u64, Result<QueuedEvent>)>> {
        let mut out = Vec::new();
        self.meta
            .scan(Cf::Queue, &keys::event(from), None, &mut |k, v| {
                if out.len() >= max {
                    return Ok(false);
                }
                let seq =
                    keys::decode_event(k).ok_or_else(|| Error::Corrupt("event key".into()))?;
                out.push((seq, QueuedEvent::decode(v)));
                Ok(true)
            })?;
        Ok(out)
    }

    /// How many events are queued.
    pub fn event_count(&self) -> Result<u64> {
        let mut n = 0;
        self.scan(Cf::Queue, &mut |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }

    /// The highest queued sequence number, if any event is queued.
    pub fn last_event(&self) -> Result<Option<u64>> {
        match self.meta.last_key(Cf::Queue)? {
            Some(k) => Ok(Some(
                keys::decode_event(&k).ok_or_else(|| Error::Corrupt("event key".into()))?,
            )),
            None => Ok(None),
        }
    }

    /// The recorded MD5 of `ino` (see `keys::ETAG`); None also for a record that does not
    /// decode (it is only a cache of the content's digest).
    pub fn etag(&self, ino: Ino) -> Result<Option<EtagRecord>> {
        Ok(self
            .blob(Cf::Xattrs, ino, keys::ETAG)?
            .and_then(|v| EtagRecord::decode(&v)))
    }

    pub fn notify_get(&self, kind: u8, name: &str) -> Result<Option<Vec<u8>>> {
        self.get_blob(Cf::Notify, &keys::notify_item(kind, name))
    }

    /// Every notify item of `kind`: (name, value), in name order.
    pub fn notify_list(&self, kind: u8) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        self.meta
            .scan(Cf::Notify, &[kind], Some(&[kind + 1]), &mut |k, v| {
                let name = String::from_utf8_lossy(&k[1..]).into_owned();
                out.push((name, decode_blob(v)?.to_vec()));
                Ok(true)
            })?;
        Ok(out)
    }

    pub fn global_get(&self, key: &str) -> Result<Option<GlobalValue>> {
        Ok(self.global_versioned(key)?.0)
    }

    /// A global-table value and the version of its record.
    pub fn global_versioned(&self, key: &str) -> Result<(Option<GlobalValue>, Version)> {
        match self.meta.get(Cf::Global, key.as_bytes())? {
            Some((v, version)) => Ok((Some(GlobalValue::decode(&v)?), version)),
            None => Ok((None, 0)),
        }
    }

    /// Every global-table entry, in key order.
    pub fn global_entries(&self) -> Result<Vec<(String, GlobalValue)>> {
        let mut out = Vec::new();
        self.scan(Cf::Global, &mut |k, v| {
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                GlobalValue::decode(v)?,
            ));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Inodes unlinked while open when the store was last used.
    pub fn orphans(&self) -> Result<Vec<Ino>> {
        Ok(self
            .orphans_of_sessions()?
            .into_iter()
            .map(|(ino, _)| ino)
            .collect())
    }

    /// Orphans whose session ended (its process stopped or died): nobody has them open.
    pub fn dead_orphans(&self) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        for (ino, session) in self.orphans_of_sessions()? {
            if session != self.session && !self.meta.session_alive(&session)? {
                out.push(ino);
            }
        }
        Ok(out)
    }

    /// Each orphan and the session that recorded it (empty: a store from before sessions).
    fn orphans_of_sessions(&self) -> Result<Vec<(Ino, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan(Cf::Orphans, &mut |k, v| {
            let ino = keys::decode_inode(k).ok_or_else(|| Error::Corrupt("orphan key".into()))?;
            out.push((ino, v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// How many other processes have the store open now (mounts on other machines).
    pub fn other_sessions(&self) -> Result<usize> {
        self.meta.other_sessions(&self.session)
    }

    /// This opening's session id.
    pub(crate) fn session(&self) -> &[u8] {
        &self.session
    }

    /// The highest inode number in use (0 for an empty store).
    pub fn max_ino(&self) -> Result<Ino> {
        match self.meta.last_key(Cf::Inodes)? {
            Some(k) => keys::decode_inode(&k).ok_or_else(|| Error::Corrupt("inode key".into())),
            None => Ok(0),
        }
    }

    /// Every inode record, in number order, decoded (fsck).
    pub fn scan_inodes(&self, mut f: impl FnMut(Ino, Result<Inode>)) -> Result<()> {
        self.scan(Cf::Inodes, &mut |k, v| {
            match keys::decode_inode(k) {
                Some(ino) => f(ino, Inode::decode(ino, v)),
                None => f(0, Err(Error::Corrupt(format!("inode key {k:?}")))),
            }
            Ok(true)
        })
    }

    /// Every directory entry: parent, name and the decoded value (fsck).
    pub fn scan_dentries(&self, mut f: impl FnMut(Ino, &[u8], Result<Dentry>)) -> Result<()> {
        self.scan(Cf::Dentries, &mut |k, v| {
            match keys::decode_named(k) {
                Some((parent, name)) => f(parent, name, Dentry::decode(v)),
                None => f(0, k, Err(Error::Corrupt(format!("dentry key {k:?}")))),
            }
            Ok(true)
        })
    }

    /// The owning inode of every omap and xattr entry (fsck).
    pub fn scan_attr_owners(&self, mut f: impl FnMut(Ino, &[u8])) -> Result<()> {
        for cf in [Cf::Omap, Cf::Xattrs] {
            self.scan(cf, &mut |k, _| {
                if let Some((ino, name)) = keys::decode_named(k) {
                    f(ino, name);
                }
                Ok(true)
            })?;
        }
        Ok(())
    }

    /// Every key of `cf`, in order.
    fn scan(&self, cf: Cf, f: &mut meta::Each<'_>) -> Result<()> {
        self.meta.scan(cf, &[], None, f)
    }

    /// Makes every committed batch durable against power loss.
    pub fn sync(&self) -> Result<()> {
        self.meta.sync()
    }

    /// Clean shutdown: the next open has nothing to replay.
    pub fn flush(&self) -> Result<()> {
        self.meta.flush()
    }

    /// Approximate bytes of live data in the store.
    pub fn approximate_size(&self) -> u64 {
        self.meta.approximate_size()
    }

    /// The engines: metadata, then data (`rocksdb + inline`, `etcd://... + rados://...`).
    pub fn backend(&self) -> String {
        format!("{} + {}", self.meta.describe(), self.data.describe())
    }

    /// Whether the metadata engine answers now, and how long one read took.
    pub fn health(&self) -> (bool, std::time::Duration) {
        let start = std::time::Instant::now();
        // Past any cache: the engine itself must answer.
        let ok = self.meta.get_latest(Cf::Meta, keys::META_SCHEMA).is_ok();
        (ok, start.elapsed())
    }

    /// Requests sent to the metadata engine's servers so far (`Meta::requests`).
    pub fn backend_requests(&self) -> u64 {
        self.meta.requests()
    }

    /// Deletes stored data nothing references and older than `grace` (`Data::collect`).
    pub fn collect_garbage(&self, grace: std::time::Duration) -> Result<usize> {
        self.data.collect(&*self.meta, grace)
    }

    /// Whether this process delivers events and runs background work (`Meta::leads`).
    pub fn leads(&self) -> bool {
        self.meta.leads()
    }

    /// Tells `changed` of every key other processes change from now on (`Meta::watch`).
    pub fn watch(&self, changed: std::sync::Arc<meta::Changed>) -> Result<()> {
        self.meta.watch(changed)
    }

    /// Bytes of one file's writes to hold before storing them (see `Data::write_back`).
    pub fn write_back(&self) -> usize {
        self.data.write_back()
    }

    /// Total, free and available bytes where the data lives: the data engine's cluster, or
    /// for inline data the filesystem holding the store's directory.
    pub fn capacity(&self) -> Result<data::Capacity> {
        match self.data.capacity() {
            Some(c) => c,
            None => {
                let st = nix::sys::statvfs::statvfs(&self.path)
                    .map_err(|e| Error::io("statfs of the store", e.into()))?;
                let frsize = st.fragment_size().max(1);
                Ok(data::Capacity {
                    total: st.blocks() * frsize,
                    free: st.blocks_free() * frsize,
                    available: st.blocks_available() * frsize,
                })
            }
        }
    }

    /// Writes raw bytes, for tests that inject damage no `Batch` method can produce.
    #[cfg(test)]
    pub(crate) fn put_raw(&self, cf: Cf, key: &[u8], value: &[u8]) {
        let mut w = self.meta.writes();
        w.put(cf, key, value);
        assert_eq!(w.commit().unwrap(), meta::Outcome::Done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_made_with_another_chunk_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = Store::open(&path).unwrap();
            let mut batch = store.batch();
            batch.put_schema();
            batch.commit().unwrap();
            // As a build with 1 MiB chunks would have written it.
            store.put_raw(Cf::Meta, keys::META_CHUNK_SIZE, &(1u64 << 20).to_be_bytes());
        }
        let err = Store::open(&path)
            .err()
            .expect("a foreign chunk size must be refused");
        assert!(
            err.to_string().contains("chunk size Some(1048576)"),
            "{err}"
        );
    }
}
