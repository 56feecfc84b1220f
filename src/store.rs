//! The store: one RocksDB per STORE directory, opened with the column families of `schema`,
//! read through typed getters here and written only through a `Batch` (one per mutating
//! operation, one commit).
//!
//! Knows bytes and records, not filesystem semantics: it never decides whether an operation is
//! allowed, it only reads and writes what `core` asks for.

pub mod batch;
pub mod codec;
pub mod keys;
pub mod schema;

use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB,
};

pub use batch::Batch;
use codec::events::{EtagRecord, GlobalValue, QueuedEvent};
use codec::{decode_blob, Dentry, Inode};
use keys::Ino;
use schema::{Cf, CHUNK_SIZE, SCHEMA_VERSION};

use crate::error::{Error, Result};

/// (package, version, module) of an installed Lua module.
pub type PackageKey = (String, String, String);

/// The daemon's log when mounted in the background; the only file a fresh store directory
/// may already hold.
pub const LOG_FILE: &str = "lunafs.log";

pub struct Store {
    db: DB,
    path: PathBuf,
}

impl Store {
    /// Opens the store at `path`, creating the database if the directory is missing or empty.
    /// Refuses a directory that holds something else, and a store another process has open.
    /// A new store has no schema record until `core` writes it together with the root inode
    /// (`Batch::put_schema`), so a crash during creation leaves a store that opens as new.
    pub fn open(path: &Path) -> Result<Store> {
        let fresh = is_missing_or_empty(path)?;
        if !fresh && !path.join("CURRENT").exists() {
            return Err(Error::NotAStore {
                path: path.to_owned(),
                why: "the directory is not empty and holds no RocksDB database".into(),
            });
        }
        let cache = rocksdb::Cache::new_lru_cache(256 << 20);
        let mut opts = Options::default();
        opts.create_if_missing(fresh);
        // A store made by an earlier release lacks the families added since; it is ours if it
        // has every first-release family, and the new ones are created empty.
        let upgradable = !fresh
            && DB::list_cf(&Options::default(), path)
                .is_ok_and(|have| Cf::V1.iter().all(|cf| have.iter().any(|h| h == cf.name())));
        opts.create_missing_column_families(fresh || upgradable);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        // Writes go to the WAL file with write(2) on every commit (no manual WAL flush), so a
        // committed batch is in the kernel's page cache and survives kill -9 of lunafs; fsync
        // syncs the WAL for power loss (see `sync`).
        opts.set_manual_wal_flush(false);
        // Sequential file reads become sequential SST reads; let the kernel read ahead.
        opts.set_advise_random_on_open(false);
        // SST files are read through mmap: a cold 1 GiB read then costs ~0.9 s of lunafs CPU
        // instead of ~1.5 s (no pread copy into RocksDB's buffers, no block allocation), and
        // beats bindfs (benches/run.sh, README "Where the time goes"; O_DIRECT reads were
        // slower still). The price: the mapped pages show in lunafs's RSS (they are page
        // cache, reclaimable), and a disk read error ends the daemon with SIGBUS instead of
        // failing one read with EIO.
        opts.set_allow_mmap_reads(true);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf.options(&cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| open_error(path, e))?;
        let store = Store {
            db,
            path: path.to_owned(),
        };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<()> {
        let not_ours = |why: String| Error::NotAStore {
            path: self.path.clone(),
            why,
        };
        match self.db.get_cf(self.cf(Cf::Meta), keys::META_SCHEMA)? {
            None if self.max_ino()? == 0 => Ok(()), // created, not yet initialized
            None => Err(not_ours("no lunafs schema record".into())),
            Some(v) if v.as_slice() == SCHEMA_VERSION.to_be_bytes() => {
                match self.db.get_cf(self.cf(Cf::Meta), keys::META_CHUNK_SIZE)? {
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

    pub(crate) fn cf(&self, cf: Cf) -> &ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family of schema::Cf is opened by Store::open")
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch::new(self)
    }

    pub fn inode(&self, ino: Ino) -> Result<Option<Inode>> {
        match self
            .db
            .get_pinned_cf(self.cf(Cf::Inodes), keys::inode(ino))?
        {
            Some(v) => Ok(Some(Inode::decode(ino, &v)?)),
            None => Ok(None),
        }
    }

    pub fn dentry(&self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        match self
            .db
            .get_pinned_cf(self.cf(Cf::Dentries), keys::named(parent, name))?
        {
            Some(v) => Ok(Some(Dentry::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every entry of a directory, in name order.
    pub fn dentries(&self, parent: Ino) -> Result<Vec<(Vec<u8>, Dentry)>> {
        let mut out = Vec::new();
        self.scan_named(Cf::Dentries, parent, |name, v| {
            out.push((name.to_vec(), Dentry::decode(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn has_dentries(&self, parent: Ino) -> Result<bool> {
        let mut any = false;
        self.scan_named(Cf::Dentries, parent, |_, _| {
            any = true;
            Ok(false)
        })?;
        Ok(any)
    }

    /// Calls `f(name, value)` for each key of `owner` in `cf`, in order, while it returns true.
    fn scan_named(
        &self,
        cf: Cf,
        owner: Ino,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let (lo, hi) = keys::named_range(owner);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(hi);
        let iter =
            self.db
                .iterator_cf_opt(self.cf(cf), ro, IteratorMode::From(&lo, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            let (_, name) = keys::decode_named(&k)
                .ok_or_else(|| Error::Corrupt(format!("short key in {}", cf.name())))?;
            if !f(name, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The stored bytes of chunks `first..=last` of `ino` (None for a hole).
    pub fn chunks(&self, ino: Ino, first: u64, last: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(Cf::Chunks);
        let keys: Vec<[u8; 16]> = (first..=last).map(|i| keys::chunk(ino, i)).collect();
        self.db
            .batched_multi_get_cf(cf, &keys, false)
            .into_iter()
            .map(|r| match r? {
                Some(v) => Ok(Some(decode_blob(&v)?.to_vec())),
                None => Ok(None),
            })
            .collect()
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
        match self.db.get_pinned_cf(self.cf(cf), key)? {
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
        self.scan_named(cf, ino, |name, _| {
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
        self.scan_named(cf, ino, |name, v| {
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
        self.scan(Cf::Classes, |k, _| {
            out.push(String::from_utf8_lossy(k).into_owned())
        })?;
        Ok(out)
    }

    /// Every installed module: (package, version, module) and its source, in key order.
    pub fn packages(&self) -> Result<Vec<(PackageKey, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Packages), IteratorMode::Start)
        {
            let (k, v) = item?;
            let id = keys::decode_package(&k)
                .ok_or_else(|| Error::Corrupt(format!("package key {k:?}")))?;
            out.push((id, decode_blob(&v)?.to_vec()));
        }
        Ok(out)
    }

    /// The inode-number high-water mark (0 if none was reserved yet).
    pub fn ino_reserved(&self) -> Result<Ino> {
        match self.db.get_cf(self.cf(Cf::Meta), keys::META_INO_RESERVED)? {
            Some(v) => keys::decode_inode(&v)
                .ok_or_else(|| Error::Corrupt("inode reservation record".into())),
            None => Ok(0),
        }
    }

    /// The event-sequence high-water mark (0 if none was reserved yet).
    pub fn event_reserved(&self) -> Result<u64> {
        match self
            .db
            .get_cf(self.cf(Cf::Meta), keys::META_EVENT_RESERVED)?
        {
            Some(v) => keys::decode_event(&v)
                .ok_or_else(|| Error::Corrupt("event reservation record".into())),
            None => Ok(0),
        }
    }

    /// Whether every inode record carries its name (see `keys::META_INODE_NAMES`).
    pub fn inode_names_done(&self) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(Cf::Meta), keys::META_INODE_NAMES)?
            .is_some())
    }

    /// The store's random id, once made.
    pub fn store_id(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(Cf::Meta), keys::META_STORE_ID)?)
    }

    /// Up to `max` queued events with sequence numbers >= `from`, in order, each decoded
    /// (or the error that made it undecodable: it can never be delivered).
    pub fn events(&self, from: u64, max: usize) -> Result<Vec<(u64, Result<QueuedEvent>)>> {
        let start = keys::event(from);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(Cf::Queue),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            if out.len() >= max {
                break;
            }
            let (k, v) = item?;
            let seq = keys::decode_event(&k).ok_or_else(|| Error::Corrupt("event key".into()))?;
            out.push((seq, QueuedEvent::decode(&v)));
        }
        Ok(out)
    }

    /// How many events are queued.
    pub fn event_count(&self) -> Result<u64> {
        let mut n = 0;
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Queue));
        it.seek_to_first();
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// The highest queued sequence number, if any event is queued.
    pub fn last_event(&self) -> Result<Option<u64>> {
        match self
            .db
            .iterator_cf(self.cf(Cf::Queue), IteratorMode::End)
            .next()
        {
            Some(item) => {
                let (k, _) = item?;
                Ok(Some(
                    keys::decode_event(&k).ok_or_else(|| Error::Corrupt("event key".into()))?,
                ))
            }
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
        self.scan_blobs(Cf::Notify, |k, v| {
            if let Some((&k0, name)) = k.split_first() {
                if k0 == kind {
                    out.push((String::from_utf8_lossy(name).into_owned(), v.to_vec()));
                }
            }
        })?;
        Ok(out)
    }

    pub fn global_get(&self, key: &str) -> Result<Option<GlobalValue>> {
        self.db
            .get_pinned_cf(self.cf(Cf::Global), key.as_bytes())?
            .map(|v| GlobalValue::decode(&v))
            .transpose()
    }

    /// Every global-table entry, in key order.
    pub fn global_entries(&self) -> Result<Vec<(String, GlobalValue)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Global), IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                GlobalValue::decode(&v)?,
            ));
        }
        Ok(out)
    }

    /// `scan`, with each value's blob decoded (the first undecodable value is the error).
    fn scan_blobs(&self, cf: Cf, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, v) = item?;
            f(&k, decode_blob(&v)?);
        }
        Ok(())
    }

    /// Inodes unlinked while open when the store was last used.
    pub fn orphans(&self) -> Result<Vec<Ino>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(Cf::Orphans), IteratorMode::Start)
        {
            let (k, _) = item?;
            out.push(keys::decode_inode(&k).ok_or_else(|| Error::Corrupt("orphan key".into()))?);
        }
        Ok(out)
    }

    /// The highest inode number in use (0 for an empty store).
    pub fn max_ino(&self) -> Result<Ino> {
        match self
            .db
            .iterator_cf(self.cf(Cf::Inodes), IteratorMode::End)
            .next()
        {
            Some(item) => {
                let (k, _) = item?;
                keys::decode_inode(&k).ok_or_else(|| Error::Corrupt("inode key".into()))
            }
            None => Ok(0),
        }
    }

    /// Every inode record, in number order, decoded (fsck).
    pub fn scan_inodes(&self, mut f: impl FnMut(Ino, Result<Inode>)) -> Result<()> {
        self.scan(Cf::Inodes, |k, v| match keys::decode_inode(k) {
            Some(ino) => f(ino, Inode::decode(ino, v)),
            None => f(0, Err(Error::Corrupt(format!("inode key {k:?}")))),
        })
    }

    /// Every directory entry: parent, name and the decoded value (fsck).
    pub fn scan_dentries(&self, mut f: impl FnMut(Ino, &[u8], Result<Dentry>)) -> Result<()> {
        self.scan(Cf::Dentries, |k, v| match keys::decode_named(k) {
            Some((parent, name)) => f(parent, name, Dentry::decode(v)),
            None => f(0, k, Err(Error::Corrupt(format!("dentry key {k:?}")))),
        })
    }

    /// Every chunk: inode, index and stored length, or the decode error (fsck).
    pub fn scan_chunks(&self, mut f: impl FnMut(Ino, u64, Result<usize>)) -> Result<()> {
        self.scan(Cf::Chunks, |k, v| match keys::decode_chunk(k) {
            Some((ino, index)) => f(ino, index, decode_blob(v).map(|d| d.len())),
            None => f(0, 0, Err(Error::Corrupt(format!("chunk key {k:?}")))),
        })
    }

    /// The owning inode of every omap and xattr entry (fsck).
    pub fn scan_attr_owners(&self, mut f: impl FnMut(Ino, &[u8])) -> Result<()> {
        for cf in [Cf::Omap, Cf::Xattrs] {
            self.scan(cf, |k, _| {
                if let Some((ino, name)) = keys::decode_named(k) {
                    f(ino, name);
                }
            })?;
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, v) = item?;
            f(&k, &v);
        }
        Ok(())
    }

    /// Makes every committed batch durable against power loss (fsync of the WAL).
    pub fn sync(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Flushes memtables to SST files so the next open replays no WAL (clean shutdown).
    pub fn flush(&self) -> Result<()> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|&cf| self.cf(cf)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
        Ok(())
    }

    /// Approximate bytes of live data in the store (SST + blob files + memtables).
    pub fn approximate_size(&self) -> u64 {
        Cf::ALL
            .iter()
            .map(|&cf| {
                [
                    "rocksdb.total-sst-files-size",
                    "rocksdb.total-blob-file-size",
                    "rocksdb.cur-size-all-mem-tables",
                ]
                .iter()
                .filter_map(|p| {
                    self.db
                        .property_int_value_cf(self.cf(cf), *p)
                        .ok()
                        .flatten()
                })
                .sum::<u64>()
            })
            .sum()
    }

    /// Writes raw bytes, for tests that inject damage no `Batch` method can produce.
    #[cfg(test)]
    pub(crate) fn put_raw(&self, cf: Cf, key: &[u8], value: &[u8]) {
        self.db
            .put_cf(self.cf(cf), key, value)
            .expect("test store accepts raw writes");
    }

    pub(crate) fn write(&self, wb: rocksdb::WriteBatch) -> Result<()> {
        Ok(self.db.write(wb)?)
    }
}

fn is_missing_or_empty(path: &Path) -> Result<bool> {
    match std::fs::read_dir(path) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok())
            .all(|e| e.file_name() == LOG_FILE)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("creating store {}", path.display()), e))?;
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(Error::NotAStore {
            path: path.to_owned(),
            why: "it is not a directory".into(),
        }),
        Err(e) => Err(Error::io(format!("reading store {}", path.display()), e)),
    }
}

fn open_error(path: &Path, e: rocksdb::Error) -> Error {
    let msg = e.to_string();
    if msg.contains("LOCK") || msg.contains("lock") {
        Error::StoreLocked(path.to_owned())
    } else if msg.contains("Column famil") || msg.contains("column famil") {
        Error::NotAStore {
            path: path.to_owned(),
            why: format!("its RocksDB has other column families ({msg})"),
        }
    } else {
        Error::Store(e)
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
            let meta = store.cf(Cf::Meta);
            store
                .db
                .put_cf(meta, keys::META_CHUNK_SIZE, (1u64 << 20).to_be_bytes())
                .unwrap();
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
