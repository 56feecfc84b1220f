//! Write-back of file data, on stores whose data engine asks for it (`Data::write_back`):
//! on RADOS every stored write is an object and a metadata commit, so a file's writes gather
//! in memory first (as `Edits`, the way a handler call stages its changes) and are stored as
//! one change when they reach the engine's size, when the file is closed (FUSE flush, at
//! every close(2)) or fsynced, before a truncate, fallocate, utimes or handler call on it,
//! and at unmount. Until then this mount's reads and attributes include them; other mounts
//! see them from the close on (close-to-open, as on NFS). A crash of lunafs loses writes not
//! yet stored, as a crash of a kernel loses dirty pages: close and fsync are the promise. On
//! the embedded store each write is stored at once (a RocksDB write is a memtable insert).
//!
//! Held writes are stored under the file's lock, as any write is; a write that finds its
//! file's writes older than `MAX_AGE` stores them, so a file written slowly and never closed
//! does not keep them in memory for long.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Core;
use crate::error::{Error, Result};
use crate::store::codec::{Inode, Kind, Timestamp};
use crate::store::data::Edits;
use crate::store::keys::Ino;

/// Held writes older than this are stored by the next write to the file.
const MAX_AGE: Duration = Duration::from_secs(5);
/// Bytes held for all files together before each write stores its file's.
const MAX_HELD: usize = 256 << 20;
/// Pieces of a file (each `limit` bytes: the engine's chunks) its held writes may touch: one
/// store is one transaction, which writes a key per piece (etcd takes 128 writes at most).
const MAX_PIECES: usize = 64;

/// One file's writes not yet stored.
#[derive(Clone)]
pub(crate) struct Held {
    edits: Edits,
    /// Which pieces (offset / limit) the writes touch.
    pieces: std::collections::BTreeSet<u64>,
    /// When the last of them was made: the file's mtime and ctime.
    changed: Timestamp,
    since: Instant,
}

#[derive(Default)]
pub(crate) struct Buffers {
    /// Bytes to hold per file before storing them; 0: store every write at once.
    limit: usize,
    /// Shared with a store in progress, so that readers see the writes until it is done.
    files: Mutex<HashMap<Ino, Arc<Held>>>,
    held: AtomicUsize,
}

impl Buffers {
    pub(crate) fn new(limit: usize) -> Buffers {
        Buffers {
            limit,
            ..Default::default()
        }
    }

    /// Whether writes are held at all.
    pub(crate) fn on(&self) -> bool {
        self.limit > 0
    }

    /// `ino`'s held writes (none, without a lock, when writes are never held: every
    /// getattr, lookup and read asks).
    fn get(&self, ino: Ino) -> Option<Arc<Held>> {
        if !self.on() {
            return None;
        }
        self.files.lock().get(&ino).cloned()
    }

    /// The inode `read` returns, as this mount sees it: with its held writes' size and times;
    /// and those writes. They are taken before the read: if they are stored meanwhile, the
    /// inode still shows them, never the size before them.
    pub(crate) fn seen(
        &self,
        ino: Ino,
        read: impl FnOnce() -> Result<Option<Inode>>,
    ) -> Result<(Option<Inode>, Option<Arc<Held>>)> {
        let held = self.get(ino);
        let mut inode = read()?;
        if let (Some(inode), Some(h)) = (inode.as_mut(), &held) {
            inode.size = h.edits.size();
            inode.mtime = h.changed;
            inode.ctime = inode.ctime.max(h.changed);
        }
        Ok((inode, held))
    }

    /// Adds a write to `ino`'s held ones (begun on a file `stored()` bytes long, asked
    /// outside the lock); whether they are due to be stored.
    fn add(
        &self,
        ino: Ino,
        stored: impl FnOnce() -> Result<u64>,
        offset: u64,
        data: &[u8],
    ) -> Result<bool> {
        let known = self.files.lock().contains_key(&ino);
        let begun = if known { 0 } else { stored()? };
        let mut files = self.files.lock();
        let held = files.entry(ino).or_insert_with(|| {
            Arc::new(Held {
                edits: Edits::new(begun),
                pieces: Default::default(),
                changed: Timestamp::now(),
                since: Instant::now(),
            })
        });
        let h = Arc::make_mut(held);
        let before = h.edits.held();
        if let Err(e) = h.edits.write(offset, data) {
            if h.edits.is_empty() {
                files.remove(&ino); // begun by this write: nothing is held
            }
            return Err(e);
        }
        let unit = self.limit as u64;
        let end = offset + data.len().max(1) as u64 - 1;
        h.pieces.extend(offset / unit..=end / unit);
        h.changed = Timestamp::now();
        let after = h.edits.held(); // overwriting held bytes holds no more: never less
        let total = self.held.fetch_add(after - before, Ordering::Relaxed) + after - before;
        Ok(after >= self.limit
            || h.pieces.len() >= MAX_PIECES
            || total >= MAX_HELD
            || h.since.elapsed() >= MAX_AGE)
    }

    /// Forgets `ino`'s held writes if they are still `stored` (now in the store, or the file
    /// is gone).
    fn stored(&self, ino: Ino, stored: &Arc<Held>) {
        let mut files = self.files.lock();
        if files.get(&ino).is_some_and(|h| Arc::ptr_eq(h, stored)) {
            files.remove(&ino);
            self.held.fetch_sub(stored.edits.held(), Ordering::Relaxed);
        }
    }

    fn files(&self) -> Vec<Ino> {
        self.files.lock().keys().copied().collect()
    }
}

impl Core {
    /// Holds a write to `ino` (under its lock), storing the file's held writes when due.
    pub(super) fn hold_write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        let stored = || {
            let inode = self.stored_inode(ino)?;
            match inode.kind {
                Kind::File => Ok(inode.size),
                Kind::Dir => Err(Error::IsDir(format!("inode {ino}"))),
                _ => Err(Error::InvalidArgument(format!("write to inode {ino}"))),
            }
        };
        if self.buffers.add(ino, stored, offset, data)? {
            // The write is held either way; a failure to store now is reported by the close
            // or fsync that tries again.
            if let Err(e) = self.store_held(ino) {
                tracing::warn!(ino, error = %e, "storing held writes failed; they stay held");
            }
        }
        Ok(())
    }

    /// Stores `ino`'s held writes, if any, in one change (under its lock).
    pub(crate) fn store_held(&self, ino: Ino) -> Result<()> {
        let Some(held) = self.buffers.get(ino) else {
            return Ok(());
        };
        self.transact("write", || {
            let mut txn = self.txn();
            let inode = match txn.modify(ino) {
                Ok(inode) => inode,
                // Deleted (asked past any cache before the writes are dropped).
                Err(Error::NotFound(_)) if self.store.inode_latest(ino)?.is_none() => return Ok(()),
                Err(e) => return Err(e),
            };
            let edits = rebased(&held.edits, inode.size)?;
            (inode.size, inode.mtime) = (edits.size(), held.changed);
            inode.ctime = inode.ctime.max(held.changed); // a rename since may be later
            txn.batch.apply(ino, &edits)?;
            txn.commit()
        })?;
        self.buffers.stored(ino, &held);
        Ok(())
    }

    /// fsync of `ino`: its held writes stored, then every commit made durable.
    pub fn sync_file(&self, ino: Ino) -> Result<()> {
        {
            let _held = self.locks.lock(&[ino]);
            self.store_held(ino)?;
        }
        self.store.sync()
    }

    /// Stores every file's held writes (syncfs, unmount).
    pub(crate) fn store_all_held(&self) -> Result<()> {
        for ino in self.buffers.files() {
            let _held = self.locks.lock(&[ino]);
            self.store_held(ino)?;
        }
        Ok(())
    }

    /// Bytes `offset..end` of `ino` (end within its size), `held` writes included.
    pub(super) fn read_held(
        &self,
        ino: Ino,
        held: Option<&Held>,
        offset: u64,
        end: u64,
    ) -> Result<Vec<u8>> {
        match held {
            Some(h) => h.edits.read(offset, end, |a, b| self.store.read(ino, a, b)),
            None => self.store.read(ino, offset, end),
        }
    }
}

/// `edits` as they apply to the file now `stored` bytes long: another mount changed its size
/// since they began (the writes land on the file as it is now).
fn rebased(edits: &Edits, stored: u64) -> Result<Cow<'_, Edits>> {
    if stored == edits.stored() {
        return Ok(Cow::Borrowed(edits));
    }
    let mut again = Edits::new(stored);
    if edits.kept() < edits.stored() {
        again.truncate(edits.kept())?;
    }
    for (at, bytes) in edits.extents() {
        again.write(at, bytes)?;
    }
    if edits.size() > again.size() {
        again.truncate(edits.size())?;
    }
    Ok(Cow::Owned(again))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_writes_land_on_a_file_another_mount_resized() {
        let mut e = Edits::new(10);
        e.write(4, b"xy").unwrap();
        e.write(20, b"z").unwrap();
        let same = rebased(&e, 10).unwrap();
        assert!(matches!(same, Cow::Borrowed(_)));
        let grown = rebased(&e, 30).unwrap();
        assert_eq!((grown.size(), grown.kept()), (30, 30));
        let stored = |a: u64, b: u64| Ok(vec![b'.'; (b - a) as usize]);
        let bytes = grown.read(0, 30, stored).unwrap();
        assert_eq!(&bytes[4..6], b"xy");
        assert_eq!(bytes[20], b'z');
        assert_eq!(bytes[29], b'.', "the other mount's bytes stay");
    }

    #[test]
    fn a_cut_stays_a_cut() {
        let mut e = Edits::new(10);
        e.truncate(2).unwrap();
        e.write(5, b"a").unwrap();
        let r = rebased(&e, 40).unwrap();
        assert_eq!((r.size(), r.kept()), (6, 2), "cut to 2, then written at 5");
    }

    #[test]
    fn buffers_hold_until_the_limit_and_show_in_attributes() {
        let b = Buffers::new(8);
        assert!(!b.add(7, || Ok(3), 0, b"abcd").unwrap());
        assert!(b.add(7, || panic!("begun already"), 4, b"efgh").unwrap());
        let inode = Inode {
            ino: 7,
            kind: Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            size: 3,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            rdev: 0,
            parent: 1,
            name: Vec::new(),
            bucket: 0,
            target: Vec::new(),
        };
        let (seen, _) = b.seen(7, || Ok(Some(inode.clone()))).unwrap();
        let inode = seen.unwrap();
        assert_eq!(inode.size, 8);
        assert!(inode.mtime > Timestamp::default());
        let held = b.get(7).unwrap();
        b.stored(7, &held);
        assert!(b.get(7).is_none());
        assert_eq!(b.held.load(Ordering::Relaxed), 0);
    }
}
