//! Object data and attributes: read, write, truncate, setattr. The bytes themselves are the
//! store's (`store::data`): core stages `Edits` and reads ranges.

use std::sync::atomic::Ordering;

use super::{Core, Txn};
use crate::error::{Error, Result};
use crate::store::codec::{Inode, Kind, Timestamp};
use crate::store::data::Edits;
pub use crate::store::data::MAX_FILE_SIZE;
use crate::store::keys::Ino;

/// How setattr sets a time: to the caller's clock or to a given value (utimensat).
#[derive(Debug, Clone, Copy)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// The changes of one setattr call; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

impl Core {
    pub fn setattr(&self, ino: Ino, change: &SetAttr) -> Result<Inode> {
        let _held = self.locks.lock(&[ino]);
        self.store_held(ino)?;
        self.transact("setattr", || {
            let mut txn = self.txn();
            let mut inode = txn.get(ino)?.clone();
            self.set_attributes(&mut txn, &mut inode, change)?;
            txn.insert(inode.clone());
            txn.commit()?;
            Ok(inode)
        })
    }

    fn set_attributes(&self, txn: &mut Txn<'_>, inode: &mut Inode, change: &SetAttr) -> Result<()> {
        let now = Timestamp::now();
        if let Some(mode) = change.mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = change.uid {
            inode.uid = uid;
        }
        if let Some(gid) = change.gid {
            inode.gid = gid;
        }
        if let Some(size) = change.size {
            let ino = inode.ino;
            match inode.kind {
                Kind::File => {}
                Kind::Dir => return Err(Error::IsDir(format!("inode {ino}"))),
                _ => return Err(Error::InvalidArgument(format!("truncate of inode {ino}"))),
            }
            let mut edits = Edits::new(inode.size);
            edits.truncate(size)?;
            txn.batch.apply(ino, &edits)?;
            inode.size = size;
            self.note_truncate(ino, size);
            inode.mtime = now;
        }
        let at = |t: TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(t) => t,
        };
        if let Some(t) = change.atime {
            inode.atime = at(t);
        }
        if let Some(t) = change.mtime {
            inode.mtime = at(t);
        }
        inode.ctime = now;
        Ok(())
    }

    /// Writes `data` at `offset`, returning the number of bytes written.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let _held = self.locks.lock(&[ino]);
        if self.buffers.on() {
            self.hold_write(ino, offset, data)?;
            self.note_write(ino, offset, data);
            return Ok(data.len());
        }
        self.transact("write", || {
            let mut txn = self.txn();
            let inode = txn.modify(ino)?;
            match inode.kind {
                Kind::File => {}
                Kind::Dir => return Err(Error::IsDir(format!("inode {ino}"))),
                _ => return Err(Error::InvalidArgument(format!("write to inode {ino}"))),
            }
            if data.is_empty() {
                return Ok(());
            }
            let mut edits = Edits::new(inode.size);
            edits.write(offset, data)?;
            let now = Timestamp::now();
            (inode.size, inode.mtime, inode.ctime) = (edits.size(), now, now);
            txn.batch.apply(ino, &edits)?;
            txn.commit()
        })?;
        self.note_write(ino, offset, data);
        Ok(data.len())
    }

    /// Reads up to `len` bytes at `offset`; short at end of file, zeros in holes.
    pub fn read(&self, ino: Ino, offset: u64, len: u32) -> Result<Vec<u8>> {
        let (inode, held) = self.buffers.seen(ino, || self.store.inode(ino))?;
        let inode = inode.ok_or_else(|| Error::NotFound(format!("inode {ino}")))?;
        if inode.kind == Kind::Dir {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        if offset >= inode.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = inode.size.min(offset + len as u64);
        let out = self.read_held(ino, held.as_deref(), offset, end)?;
        self.touch_atime(&inode)?;
        Ok(out)
    }

    /// relatime: a read updates atime only when it is older than the last change or a day
    /// old, so reading is not a write on every call.
    fn touch_atime(&self, seen: &Inode) -> Result<()> {
        if !self.update_atime.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = Timestamp::now();
        if seen.atime > seen.mtime && seen.atime > seen.ctime && now.sec - seen.atime.sec < 86_400 {
            return Ok(());
        }
        let _held = self.locks.lock(&[seen.ino]);
        self.transact("atime update", || {
            let mut txn = self.txn();
            match txn.modify(seen.ino) {
                Ok(inode) => inode.atime = now,
                Err(Error::NotFound(_)) => return Ok(()), // deleted meanwhile
                Err(e) => return Err(e),
            }
            txn.commit()
        })
    }
}

impl Core {
    /// fallocate(mode 0): the file becomes at least `size` bytes long; the new range reads
    /// as zeros (it is a hole: lunafs stores no zero chunks).
    pub fn allocate(&self, ino: Ino, size: u64) -> Result<()> {
        let _held = self.locks.lock(&[ino]);
        self.store_held(ino)?;
        self.transact("fallocate", || {
            let mut txn = self.txn();
            let inode = txn.get(ino)?;
            if inode.kind != Kind::File {
                return Err(Error::InvalidArgument(format!("fallocate of inode {ino}")));
            }
            if size <= inode.size {
                return Ok(());
            }
            if size > MAX_FILE_SIZE {
                return Err(Error::FileTooBig(size));
            }
            let now = Timestamp::now();
            let inode = txn.modify(ino)?;
            (inode.size, inode.mtime, inode.ctime) = (size, now, now);
            txn.commit()
        })
    }
}
