//! `core`: the filesystem's semantics on top of the store. Buckets, directories, objects,
//! their data and xattrs (the omap), and the rules a POSIX caller expects of them.
//!
//! Every mutating operation locks the inodes it rewrites, reads them into a `Txn`, changes
//! them there, and commits one `Batch`. The `Txn` checks at commit that every inode it read
//! still has the version it read: every change of anything an inode owns (a directory's
//! entries, a file's data, omap and xattrs) rewrites that inode, so on a store shared by
//! several mounts a commit fails (`Error::Conflict`) if another mount changed what the
//! operation depended on, and `transact` runs the operation again. `core` knows no FUSE
//! types (the adapter in `fs` converts) and is tested on a temp-dir store without a kernel.

mod buffer;
pub mod call;
pub mod ceph;
pub mod class;
pub mod coherence;
mod counter;
pub mod dir;
pub mod events;
pub mod fsck;
pub mod global;
pub mod housekeeping;
pub mod locks;
mod migrate;
pub mod names;
pub mod object;
pub mod omap;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::codec::{Inode, Kind, Timestamp};
use crate::store::keys::Ino;
use crate::store::{Batch, Store};
use locks::Locks;

pub use names::Name;

/// The mount root, whose entries are the buckets.
pub const ROOT: Ino = 1;

/// Inode numbers at or above this are never allocated from the store; the FUSE adapter uses
/// them for the virtual `/.lunafs` tree.
pub const FIRST_VIRTUAL_INO: Ino = 1 << 62;

/// Inode numbers are reserved this many at a time (one small meta write per block).
const INO_BLOCK: u64 = 4096;

/// How many times an operation runs before a conflict with other mounts is given up on. A
/// mount hammering one object from a tight loop wins most races against another one doing
/// the same (its reads come from memory): the loser needs many attempts, spread by the
/// backoff over up to about 4 s.
const ATTEMPTS: u32 = 64;

/// Who is asking: the caller's credentials, for ownership of what it creates.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Capacity numbers for statfs.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

pub struct Core {
    store: Store,
    locks: Locks,
    /// Inode numbers, reserved ahead in `meta`.
    inos: counter::Counter,
    /// Serializes renames between two directories, so the ancestor walk that refuses moving
    /// a directory into itself cannot race another such rename (as the kernel's own
    /// s_vfs_rename_mutex does).
    cross_dir_rename: Mutex<()>,
    /// relatime updates on read; off for read-only and noatime mounts.
    update_atime: AtomicBool,
    /// Open count per file inode: an inode whose last name is removed while open lives on
    /// (as an orphan) until its count drops to zero.
    open_files: Mutex<HashMap<Ino, u32>>,
    /// Runs object-class handlers (the Lua sandbox and its limits).
    engine: crate::lua::Engine,
    /// Stored classes and packages, cached.
    registry: class::Registry,
    /// Notification settings and event queueing.
    events: events::Events,
    global: global::Global,
    /// Writes held before they are stored, on stores that want it.
    buffers: buffer::Buffers,
}

/// Operations of this process that ran again because another mount changed what they read.
static CONFLICTS_RETRIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many operations ran again after a conflict, in this process so far.
pub fn conflicts_retried() -> u64 {
    CONFLICTS_RETRIED.load(Ordering::Relaxed)
}

/// Purges the files unlinked while open by mounts that have stopped (nobody can open them
/// again); returns how many.
fn purge_dead_orphans(store: &Store) -> Result<usize> {
    let orphans = store.dead_orphans()?;
    if orphans.is_empty() {
        return Ok(0);
    }
    let mut batch = store.batch();
    for &ino in &orphans {
        match store.inode(ino) {
            // Relinked since (or damage): keep the inode, drop the stale record.
            Ok(Some(inode)) if inode.nlink > 0 => batch.delete_orphan(ino),
            _ => batch.purge_inode(ino)?,
        }
    }
    batch.commit()?;
    tracing::info!(count = orphans.len(), "purged inodes unlinked while open");
    Ok(orphans.len())
}

impl Core {
    /// Opens (or creates) the store at `path`. A new store's root belongs to `owner`.
    pub fn open(path: &Path, owner: (u32, u32)) -> Result<Core> {
        Core::with_store(Store::open(path)?, owner)
    }

    /// Purges what mounts that have stopped left unlinked while open (`housekeeping`).
    pub fn purge_dead_orphans(&self) -> Result<usize> {
        purge_dead_orphans(&self.store)
    }

    /// Core on an opened store (initialized first if it is new).
    pub fn with_store(store: Store, owner: (u32, u32)) -> Result<Core> {
        if store.inode(ROOT)?.is_none() {
            // A new store: schema record and root in one batch, so a crash leaves either a
            // complete store or one that opens as new.
            let now = Timestamp::now();
            let mut batch = store.batch();
            batch.put_schema();
            batch.put_inode(&Inode {
                ino: ROOT,
                kind: Kind::Dir,
                perm: 0o755,
                uid: owner.0,
                gid: owner.1,
                nlink: 2,
                size: 0,
                atime: now,
                mtime: now,
                ctime: now,
                crtime: now,
                rdev: 0,
                parent: ROOT,
                name: Vec::new(),
                bucket: 0,
                target: Vec::new(),
            });
            batch.commit()?;
        }
        purge_dead_orphans(&store)?;
        let next = (store.max_ino()?.max(ROOT) + 1).max(store.ino_reserved()?);
        migrate::run(&store)?;
        let events = events::Events::open(&store)?;
        Ok(Core {
            buffers: buffer::Buffers::new(store.write_back()),
            events,
            global: global::Global::default(),
            store,
            locks: Locks::new(),
            inos: counter::Counter::new(
                "inode numbers",
                crate::store::keys::META_INO_RESERVED,
                next,
                INO_BLOCK,
                FIRST_VIRTUAL_INO,
            ),
            cross_dir_rename: Mutex::new(()),
            update_atime: AtomicBool::new(true),
            open_files: Mutex::new(HashMap::new()),
            engine: crate::lua::Engine::default(),
            registry: class::Registry::default(),
        })
    }

    /// Turns relatime updates on reads on or off (off for `ro` and `noatime` mounts).
    pub fn set_update_atime(&self, on: bool) {
        self.update_atime.store(on, Ordering::Relaxed);
    }

    /// The store's directory.
    pub fn store_path(&self) -> &Path {
        self.store.path()
    }

    /// The store's engines and whether they answer (for status).
    pub fn backend(&self) -> (String, bool, std::time::Duration) {
        let (ok, took) = self.store.health();
        (self.store.backend(), ok, took)
    }

    /// Requests this process sent to the metadata engine's servers (0 on the embedded store).
    pub fn backend_requests(&self) -> u64 {
        self.store.backend_requests()
    }

    /// The store's size on disk, roughly.
    pub fn store_bytes(&self) -> u64 {
        self.store.approximate_size()
    }

    /// The inode, with this mount's writes not yet stored.
    pub fn getattr(&self, ino: Ino) -> Result<Inode> {
        let (inode, _) = self.buffers.seen(ino, || self.store.inode(ino))?;
        inode.ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    /// The inode as stored, without this mount's writes not yet stored.
    pub(crate) fn stored_inode(&self, ino: Ino) -> Result<Inode> {
        self.store
            .inode(ino)?
            .ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    /// The inode as another mount may just have left it (an open: close-to-open).
    pub fn revalidate(&self, ino: Ino) -> Result<Inode> {
        let (inode, _) = self.buffers.seen(ino, || self.store.inode_latest(ino))?;
        inode.ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    /// A never-used inode number.
    fn alloc_ino(&self) -> Result<Ino> {
        self.inos.next(&self.store)
    }

    fn txn(&self) -> Txn<'_> {
        Txn {
            store: &self.store,
            batch: self.store.batch(),
            inodes: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// Runs `op` (one operation: its reads and its commit) until it commits without a
    /// conflict, waiting a little longer at random after each; gives up with EIO after
    /// `ATTEMPTS`. Only a store shared by several mounts ever conflicts.
    fn transact<T>(&self, what: &str, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        for attempt in 0..ATTEMPTS {
            let done = {
                let _attempt = self.store.operation();
                op()
            };
            match done {
                Err(Error::Conflict) => {
                    CONFLICTS_RETRIED.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(backoff(attempt))
                }
                done => return done,
            }
        }
        tracing::warn!(
            operation = what,
            attempts = ATTEMPTS,
            "gave up: other mounts kept changing what the operation read"
        );
        Err(Error::Contended(format!(
            "{what}: other mounts kept changing what it read ({ATTEMPTS} attempts)"
        )))
    }

    /// Counts an open of a file; pairs with `close_file`.
    pub fn open_file(&self, ino: Ino) -> Result<()> {
        let _held = self.locks.lock(&[ino]);
        let inode = self.getattr(ino)?;
        let mut open = self.open_files.lock();
        // An unlinked file can still be opened again while open (through /proc/PID/fd).
        if inode.nlink == 0 && !open.contains_key(&ino) {
            return Err(Error::NotFound(format!("inode {ino}")));
        }
        *open.entry(ino).or_insert(0) += 1;
        Ok(())
    }

    /// Ends an open; the last close of an unlinked file deletes it.
    pub fn close_file(&self, ino: Ino) -> Result<()> {
        let _held = self.locks.lock(&[ino]);
        let still_open = {
            let mut open = self.open_files.lock();
            match open.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    true
                }
                _ => {
                    open.remove(&ino);
                    false
                }
            }
        };
        if still_open {
            return Ok(());
        }
        self.transact("release", || {
            let mut txn = self.txn();
            match txn.get(ino) {
                Ok(inode) if inode.nlink == 0 => {}
                Ok(_) | Err(Error::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            }
            txn.purge(ino)?;
            txn.commit()
        })
    }

    /// How many files are open (for stats).
    pub fn open_file_count(&self) -> usize {
        self.open_files.lock().len()
    }

    fn is_open(&self, ino: Ino) -> bool {
        self.open_files.lock().contains_key(&ino)
    }

    /// syncfs: every file's writes stored, and every change committed so far survives power
    /// loss once this returns.
    pub fn sync(&self) -> Result<()> {
        self.store_all_held()?;
        self.store.sync()
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let c = self.store.capacity()?;
        let used_inodes = self.inos.peek();
        Ok(StatFs {
            blocks: c.total / 4096,
            bfree: c.free / 4096,
            bavail: c.available / 4096,
            files: used_inodes + (1 << 32),
            ffree: 1 << 32,
            bsize: 4096,
            namelen: names::NAME_MAX as u32,
        })
    }

    /// Clean shutdown: flush memtables so the next open has no WAL to replay.
    pub fn shutdown(&self) -> Result<()> {
        self.store_all_held()?;
        self.store.sync()?;
        self.store.flush()
    }
}

/// A random wait between 0.5 and 1 times 2^attempt ms, at most 64 ms.
fn backoff(attempt: u32) -> std::time::Duration {
    use std::hash::BuildHasher;
    let ceiling = 1000u64 << attempt.min(6);
    let r = std::collections::hash_map::RandomState::new().hash_one(attempt);
    std::time::Duration::from_micros(ceiling / 2 + r % (ceiling / 2))
}

/// The inodes one operation reads and rewrites, and the batch that will carry the change.
pub(crate) struct Txn<'a> {
    store: &'a Store,
    batch: Batch<'a>,
    inodes: BTreeMap<Ino, Inode>,
    dirty: BTreeSet<Ino>,
}

impl<'a> Txn<'a> {
    /// The inode, loaded once per transaction; the commit checks it is still as read.
    pub(crate) fn get(&mut self, ino: Ino) -> Result<&mut Inode> {
        if !self.inodes.contains_key(&ino) {
            let (inode, version) = self
                .store
                .inode_versioned(ino)?
                .ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
            self.seed(inode, version);
        }
        Ok(self.inodes.get_mut(&ino).expect("inserted above"))
    }

    /// An inode read earlier (with the version it had then), as if `get` had read it.
    pub(crate) fn seed(&mut self, inode: Inode, version: crate::store::meta::Version) {
        self.batch.check_inode(inode.ino, version);
        self.inodes.insert(inode.ino, inode);
    }

    /// The inode, to be written back at commit.
    fn modify(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.dirty.insert(ino);
        self.get(ino)
    }

    fn insert(&mut self, inode: Inode) {
        self.dirty.insert(inode.ino);
        self.inodes.insert(inode.ino, inode);
    }

    /// Deletes the inode and all it owns instead of writing it back.
    fn purge(&mut self, ino: Ino) -> Result<()> {
        self.dirty.remove(&ino);
        self.inodes.remove(&ino);
        self.batch.purge_inode(ino)
    }

    fn commit(mut self) -> Result<()> {
        for ino in &self.dirty {
            self.batch.put_inode(&self.inodes[ino]);
        }
        self.batch.commit()
    }
}
