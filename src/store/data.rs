//! `Data`: where a file's bytes live, behind one interface, and `Edits`, the changes to one
//! file's bytes that an operation stages (a FUSE write or truncate, or every write of a
//! handler call) before a `Data` turns them into the operation's batch.
//!
//! Engines:
//! - inline (`data/inline.rs`, the embedded default): fixed 16 KiB chunks in the `chunks`
//!   family, each rewritten in place (one value per chunk).
//! - RADOS (the shared backend): slices, immutable objects whose list per chunk lives in
//!   `chunks`.
//!
//! Invariant of every engine: nothing stored lies past the file's size, so growing a file
//! (truncate up, a write past the end) never shows old bytes, and holes read as zeros.

pub mod inline;
pub mod slices;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::keys::{self, Ino};
use super::meta::{Meta, Writes};
use super::schema::Cf;
use crate::error::{Error, Result};

/// Largest file size: 1 PiB, far past any test yet well inside the key and offset arithmetic.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

pub trait Data: Send + Sync {
    /// The stored bytes `offset..end` of `ino` (end within its size); holes read as zeros.
    fn read(&self, meta: &dyn Meta, ino: Ino, offset: u64, end: u64) -> Result<Vec<u8>>;

    /// Stages `edits` of `ino` into `w`.
    fn apply(&self, meta: &dyn Meta, w: &mut dyn Writes, ino: Ino, edits: &Edits) -> Result<()>;

    /// Stages the removal of every byte of `ino`: every engine keeps a file's records under
    /// its (inode, chunk) keys of the `chunks` family (what they point to, if anything, is
    /// garbage for `collect`).
    fn purge(&self, _meta: &dyn Meta, w: &mut dyn Writes, ino: Ino) -> Result<()> {
        w.delete_range(Cf::Chunks, &keys::chunk(ino, 0), &keys::chunk(ino + 1, 0));
        Ok(())
    }

    /// fsck: every stored unit of data checked against what its inode is.
    fn check(&self, meta: &dyn Meta, owner: &dyn Fn(Ino) -> Owner) -> Result<Checked>;

    /// fsck repair: stages the removal of whatever `ino` stores at or past `size`.
    fn trim(&self, meta: &dyn Meta, w: &mut dyn Writes, ino: Ino, size: u64) -> Result<()>;

    /// Deletes stored data nothing references any more and older than `grace` (an engine
    /// whose data lives in the metadata batches has none); returns how many units went.
    fn collect(&self, _meta: &dyn Meta, _grace: Duration) -> Result<usize> {
        Ok(0)
    }

    /// The engine, as users name it (`inline`, `rados://POOL`).
    fn describe(&self) -> String;

    /// Bytes of writes to one file worth holding in memory and storing as one change (see
    /// `core::buffer`); 0: store each write at once.
    fn write_back(&self) -> usize {
        0
    }

    /// The space of the cluster holding the data; None: the store directory's filesystem.
    fn capacity(&self) -> Option<Result<Capacity>> {
        None
    }
}

/// Bytes of storage (statfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total: u64,
    pub free: u64,
    pub available: u64,
}

/// fsck: what is wrong with data stored at file offsets `start..end` of `ino`, given its
/// owner; each inode is reported once (`reported`).
pub fn misplaced(
    ino: Ino,
    owner: Owner,
    start: u64,
    end: u64,
    reported: &mut BTreeSet<Ino>,
) -> Option<DataFinding> {
    let (problem, fix) = match owner {
        Owner::Damaged => return None,
        Owner::Missing => (format!("data of missing inode {ino}"), Fix::Purge),
        Owner::Other => (
            format!("data on inode {ino}, which is not a file"),
            Fix::Trim(0),
        ),
        Owner::File { size } if start >= size => (
            format!("inode {ino}: data at {start} lies past the size {size}"),
            Fix::Trim(size),
        ),
        Owner::File { size } if end > size => (
            format!("inode {ino}: data up to {end} lies past the size {size}"),
            Fix::Trim(size),
        ),
        Owner::File { .. } => return None,
    };
    reported
        .insert(ino)
        .then_some(DataFinding { ino, problem, fix })
}

/// What fsck knows of the inode some stored data belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    File {
        size: u64,
    },
    /// An inode that is not a regular file (holds no data).
    Other,
    Missing,
    /// A record that does not decode: its data is left alone.
    Damaged,
}

/// What `Data::check` found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Stored units (chunks) seen.
    pub units: usize,
    pub findings: Vec<DataFinding>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFinding {
    pub ino: Ino,
    pub problem: String,
    pub fix: Fix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// Drop what is stored at or past this offset (`Data::trim`).
    Trim(u64),
    /// The owner is missing: purge the inode's leftovers.
    Purge,
    /// Nothing safe to do.
    None,
}

/// Pending changes to one file's bytes: what was stored, the lowest size it was cut to, the
/// bytes written since (disjoint extents, adjacent ones merged, none past the size) and the
/// size after.
#[derive(Debug, Clone)]
pub struct Edits {
    stored: u64,
    cut: u64,
    extents: BTreeMap<u64, Vec<u8>>,
    size: u64,
}

impl Edits {
    /// No changes yet to a file of `stored` bytes.
    pub fn new(stored: u64) -> Edits {
        Edits {
            stored,
            cut: stored,
            extents: BTreeMap::new(),
            size: stored,
        }
    }

    /// The file's size with the edits.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size before the edits.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// The stored bytes that survive the edits: `0..kept`.
    pub fn kept(&self) -> u64 {
        self.cut.min(self.stored)
    }

    /// Whether applying would change nothing.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty() && self.cut >= self.stored && self.size == self.stored
    }

    /// Bytes the written extents hold.
    pub fn held(&self) -> usize {
        self.extents.values().map(Vec::len).sum()
    }

    /// The written extents, in offset order.
    pub fn extents(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.extents.iter().map(|(&at, b)| (at, b.as_slice()))
    }

    /// Extents overlapping `from..to`, in order.
    pub fn extents_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let before = self
            .extents
            .range(..from)
            .next_back()
            .filter(|(&at, b)| at + b.len() as u64 > from);
        before
            .into_iter()
            .chain(self.extents.range(from..to))
            .map(|(&at, b)| (at, b.as_slice()))
    }

    /// Whether written extents cover all of `from..to`.
    pub fn covers(&self, from: u64, to: u64) -> bool {
        let mut next = from;
        for (at, b) in self.extents_in(from, to) {
            if at > next {
                return false;
            }
            next = next.max(at + b.len() as u64);
        }
        next >= to
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooBig(offset))?;
        if data.is_empty() {
            return Ok(());
        }
        self.remove(offset, end);
        let mut start = offset;
        let mut bytes = data.to_vec();
        // Merged with the extents that end where it starts and start where it ends.
        if let Some((&at, prev)) = self.extents.range(..offset).next_back() {
            if at + prev.len() as u64 == offset {
                let mut joined = self.extents.remove(&at).unwrap_or_default();
                joined.extend_from_slice(&bytes);
                (start, bytes) = (at, joined);
            }
        }
        if let Some(next) = self.extents.remove(&end) {
            bytes.extend_from_slice(&next);
        }
        self.extents.insert(start, bytes);
        self.size = self.size.max(end);
        Ok(())
    }

    /// Sets the size; bytes past it are gone.
    pub fn truncate(&mut self, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::FileTooBig(size));
        }
        if size < self.size {
            self.remove(size, u64::MAX);
            self.cut = self.cut.min(size);
        }
        self.size = size;
        Ok(())
    }

    /// Removes written bytes in `from..to`, keeping the parts of extents outside it.
    fn remove(&mut self, from: u64, to: u64) {
        let hit: Vec<u64> = self.extents_in(from, to).map(|(at, _)| at).collect();
        for at in hit {
            let Some(b) = self.extents.remove(&at) else {
                continue;
            };
            let end = at + b.len() as u64;
            if at < from {
                self.extents.insert(at, b[..(from - at) as usize].to_vec());
            }
            if end > to {
                self.extents.insert(to, b[(to - at) as usize..].to_vec());
            }
        }
    }

    /// Bytes `offset..end` (end within the size) as the edits leave them; `stored(a, b)`
    /// reads stored bytes `a..b`.
    pub fn read(
        &self,
        offset: u64,
        end: u64,
        stored: impl FnOnce(u64, u64) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; (end - offset) as usize];
        let kept_end = end.min(self.kept());
        if offset < kept_end && !self.covers(offset, kept_end) {
            let base = stored(offset, kept_end)?;
            out[..base.len()].copy_from_slice(&base);
        }
        paint(&mut out, offset, self.extents_in(offset, end));
        Ok(out)
    }
}

/// Copies the parts of `extents` that fall in `out` (which starts at file offset `base`).
pub fn paint<'a>(out: &mut [u8], base: u64, extents: impl Iterator<Item = (u64, &'a [u8])>) {
    let end = base + out.len() as u64;
    for (at, b) in extents {
        let lo = at.max(base);
        let hi = end.min(at + b.len() as u64);
        if lo < hi {
            out[(lo - base) as usize..(hi - base) as usize]
                .copy_from_slice(&b[(lo - at) as usize..(hi - at) as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_ones(len: u64) -> impl Fn(u64, u64) -> Result<Vec<u8>> {
        move |a, b| {
            assert!(b <= len);
            Ok(vec![1u8; (b - a) as usize])
        }
    }

    #[test]
    fn writes_merge_split_and_read_through() {
        let mut e = Edits::new(10);
        e.write(2, b"ab").unwrap();
        e.write(4, b"cd").unwrap();
        assert_eq!(e.extents().count(), 1, "adjacent writes merge");
        e.write(3, b"X").unwrap();
        assert_eq!(
            e.read(0, 10, stored_ones(10)).unwrap(),
            b"\x01\x01aXcd\x01\x01\x01\x01"
        );
        e.write(12, b"zz").unwrap();
        assert_eq!(e.size(), 14);
        assert_eq!(e.read(8, 14, stored_ones(10)).unwrap(), b"\x01\x01\0\0zz");
        assert!(e.covers(2, 6) && !e.covers(2, 7));
    }

    #[test]
    fn truncate_cuts_stored_bytes_and_extents_and_growing_shows_zeros() {
        let mut e = Edits::new(10);
        e.write(6, b"abcd").unwrap();
        e.truncate(4).unwrap();
        assert_eq!(e.kept(), 4);
        assert_eq!(e.extents().count(), 0);
        e.truncate(12).unwrap();
        assert_eq!(
            e.read(0, 12, stored_ones(4)).unwrap(),
            [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        e.write(5, b"q").unwrap();
        e.truncate(6).unwrap();
        assert_eq!(e.read(0, 6, stored_ones(4)).unwrap(), [1, 1, 1, 1, 0, b'q']);
        assert!(!e.is_empty());
        assert!(Edits::new(3).is_empty());
    }

    #[test]
    fn sizes_past_the_limit_are_refused() {
        let mut e = Edits::new(0);
        assert!(e.write(MAX_FILE_SIZE, b"x").is_err());
        assert!(e.truncate(MAX_FILE_SIZE + 1).is_err());
        assert!(e.is_empty());
    }
}
