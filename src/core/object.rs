//! Object data and attributes: read, write, truncate, setattr.
//!
//! A file's bytes live in fixed-size chunks (`schema::CHUNK_SIZE`); a missing chunk is a hole
//! and reads as zeros, and a chunk never holds bytes past the file's size (truncate trims it),
//! so growing a file never resurrects old data. A write rewrites only the chunks it touches,
//! reading back at most the first and last when it covers them partially.

use std::sync::atomic::Ordering;

use super::Core;
use crate::error::{Error, Result};
use crate::store::codec::{Inode, Kind, Timestamp};
use crate::store::keys::Ino;
use crate::store::schema::CHUNK_SIZE;
use crate::store::Batch;

/// Largest file size: 1 PiB, far past any test yet well inside the key and offset arithmetic.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

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
        let mut inode = self.getattr(ino)?;
        let now = Timestamp::now();
        let mut batch = self.store.batch();
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
            match inode.kind {
                Kind::File => {}
                Kind::Dir => return Err(Error::IsDir(format!("inode {ino}"))),
                _ => return Err(Error::InvalidArgument(format!("truncate of inode {ino}"))),
            }
            self.truncate(&mut batch, &mut inode, size)?;
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
        batch.put_inode(&inode);
        batch.commit()?;
        Ok(inode)
    }

    fn truncate(&self, batch: &mut Batch<'_>, inode: &mut Inode, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::FileTooBig(size));
        }
        if size < inode.size {
            batch.delete_chunks_from(inode.ino, size.div_ceil(CHUNK_SIZE));
            let keep = (size % CHUNK_SIZE) as usize;
            if keep != 0 {
                let index = size / CHUNK_SIZE;
                if let Some(mut chunk) = self.chunk(inode.ino, index)? {
                    if chunk.len() > keep {
                        chunk.truncate(keep);
                        batch.put_chunk(inode.ino, index, &chunk);
                    }
                }
            }
        }
        inode.size = size;
        Ok(())
    }

    fn chunk(&self, ino: Ino, index: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.store.chunks(ino, index, index)?.pop().flatten())
    }

    /// Writes `data` at `offset`, returning the number of bytes written.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        let _held = self.locks.lock(&[ino]);
        let mut inode = self.getattr(ino)?;
        match inode.kind {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDir(format!("inode {ino}"))),
            _ => return Err(Error::InvalidArgument(format!("write to inode {ino}"))),
        }
        if data.is_empty() {
            return Ok(0);
        }
        let mut batch = self.store.batch();
        let end = write_chunks(
            inode.size,
            offset,
            data,
            |index| self.chunk(ino, index),
            |index, chunk| batch.put_chunk(ino, index, chunk),
        )?;
        let now = Timestamp::now();
        inode.size = inode.size.max(end);
        inode.mtime = now;
        inode.ctime = now;
        batch.put_inode(&inode);
        batch.commit()?;
        self.note_write(ino, offset, data);
        Ok(data.len())
    }

    /// Reads up to `len` bytes at `offset`; short at end of file, zeros in holes.
    pub fn read(&self, ino: Ino, offset: u64, len: u32) -> Result<Vec<u8>> {
        let inode = self.getattr(ino)?;
        if inode.kind == Kind::Dir {
            return Err(Error::IsDir(format!("inode {ino}")));
        }
        if offset >= inode.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = inode.size.min(offset + len as u64);
        let out = read_chunks(offset, end, |first, last| {
            self.store.chunks(ino, first, last)
        })?;
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
        let Some(mut inode) = self.store.inode(seen.ino)? else {
            return Ok(()); // deleted meanwhile
        };
        inode.atime = now;
        let mut batch = self.store.batch();
        batch.put_inode(&inode);
        batch.commit()
    }
}

/// Splits a write of `data` at `offset` into chunks and hands each new chunk to `put`;
/// `stored` fetches a chunk's current bytes, needed only where the write covers part of what
/// the file holds. Returns the write's end offset. Shared by FUSE writes and handler
/// transactions, so both keep the chunk invariants the same way.
pub(super) fn write_chunks(
    size: u64,
    offset: u64,
    data: &[u8],
    mut stored: impl FnMut(u64) -> Result<Option<Vec<u8>>>,
    mut put: impl FnMut(u64, &[u8]),
) -> Result<u64> {
    let end = offset
        .checked_add(data.len() as u64)
        .filter(|&e| e <= MAX_FILE_SIZE)
        .ok_or(Error::FileTooBig(offset))?;
    for index in offset / CHUNK_SIZE..=(end - 1) / CHUNK_SIZE {
        let base = index * CHUNK_SIZE;
        let lo = offset.max(base) - base; // write range within the chunk
        let hi = end.min(base + CHUNK_SIZE) - base;
        let piece = &data[(base + lo - offset) as usize..(base + hi - offset) as usize];
        // Bytes of this chunk that exist in the file now.
        let existing = size.saturating_sub(base).min(CHUNK_SIZE);
        if lo == 0 && hi >= existing {
            put(index, piece);
        } else {
            let mut chunk = stored(index)?.unwrap_or_default();
            if chunk.len() < hi as usize {
                chunk.resize(hi as usize, 0);
            }
            chunk[lo as usize..hi as usize].copy_from_slice(piece);
            put(index, &chunk);
        }
    }
    Ok(end)
}

/// The bytes `offset..end` (end within the file) from the chunks `fetch(first, last)`
/// returns; holes read as zeros.
pub(super) fn read_chunks(
    offset: u64,
    end: u64,
    fetch: impl FnOnce(u64, u64) -> Result<Vec<Option<Vec<u8>>>>,
) -> Result<Vec<u8>> {
    let mut out = vec![0u8; (end - offset) as usize];
    let first = offset / CHUNK_SIZE;
    for (i, chunk) in fetch(first, (end - 1) / CHUNK_SIZE)?
        .into_iter()
        .enumerate()
    {
        let Some(chunk) = chunk else { continue };
        let base = (first + i as u64) * CHUNK_SIZE;
        let lo = offset.max(base);
        let hi = end.min(base + chunk.len() as u64);
        if lo < hi {
            out[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&chunk[(lo - base) as usize..(hi - base) as usize]);
        }
    }
    Ok(out)
}

impl Core {
    /// fallocate(mode 0): the file becomes at least `size` bytes long; the new range reads
    /// as zeros (it is a hole: lunafs stores no zero chunks).
    pub fn allocate(&self, ino: Ino, size: u64) -> Result<()> {
        let _held = self.locks.lock(&[ino]);
        let mut inode = self.getattr(ino)?;
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
        inode.size = size;
        inode.mtime = now;
        inode.ctime = now;
        let mut batch = self.store.batch();
        batch.put_inode(&inode);
        batch.commit()
    }
}
