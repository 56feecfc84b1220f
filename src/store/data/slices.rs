//! File bytes in Ceph RADOS, the shared backend's data engine.
//!
//! A file is cut into chunks of `CHUNK` bytes. The `chunks` family maps (inode, chunk index)
//! to the chunk's **slice list** (`codec::Slice`): disjoint pieces, each a byte range of one
//! immutable RADOS object named `<ino>.<chunk>.<id>` (hex) in the filesystem's namespace.
//! Bytes no slice covers are holes (zeros); no slice reaches past the file's size. Up to
//! `INLINE_MAX` live bytes of a chunk may instead be kept in the list's own value (slices of
//! id `INLINE`): small files need no object at all.
//!
//! A change writes its new bytes as one new object per chunk it touches *before* the
//! operation's transaction commits, and the transaction replaces the slice list: earlier
//! slices the new one covers are cut or dropped. Objects are never overwritten, so a reader,
//! a crash or a failed commit never sees a torn chunk. A list naming more than `MAX_OBJECTS`
//! objects (or holding more than `MAX_SLICES` pieces) is compacted into one new object in the
//! same change.
//!
//! Garbage: an object no slice list names (dropped by a later write, a truncate or an unlink,
//! or written by an operation that never committed) is deleted by `collect`, which lists the
//! namespace and removes what no list references and is older than a grace period. The grace
//! covers operations in flight (their objects are written, their commit not yet done); since
//! an object, once unreferenced, is never referenced again (a commit that would re-reference
//! it read an inode that changed since, and fails its check), this is safe at any crash point.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Checked, Data, DataFinding, Edits, Fix, Owner};
use crate::error::{Error, Result};
use crate::store::codec::{decode_chunk_list, encode_chunk_list, ChunkList, Slice, INLINE};
use crate::store::keys::{self, Ino};
use crate::store::meta::{Meta, Writes};
use crate::store::rados::Pool;
use crate::store::schema::Cf;

/// Chunk size: 4 MiB, RADOS' default object size, so a sequential write stores whole
/// objects and a read of a chunk is one object read.
pub const CHUNK: u64 = 4 << 20;
/// Objects a chunk's list may name before a change compacts it into one object: a read of
/// the chunk is one RADOS read per object. (Counting pieces instead, held random writes, many
/// pieces in one object per chunk, made nearly every store rewrite its chunks whole.)
const MAX_OBJECTS: usize = 16;
/// Pieces a list may hold (its etcd value stays a few KiB).
const MAX_SLICES: usize = 256;
/// Live bytes a chunk list may hold inline, in its own value: a small file's data rides in
/// the commit that stores it (no RADOS object, one round trip less) and reads of it come with
/// the list (from the read cache, on other mounts too). Past this, new bytes go to objects.
const INLINE_MAX: usize = 16 << 10;
/// Reads retried when a listed object vanished (collected after a concurrent change).
const READ_ATTEMPTS: usize = 4;

pub struct Slices {
    pool: Pool,
    /// Object ids: a random start per process, then counting up.
    next_id: AtomicU64,
}

/// What `collect` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub objects: usize,
    pub referenced: usize,
    pub removed: usize,
}

fn object(ino: Ino, index: u64, id: u64) -> String {
    format!("{ino:x}.{index:x}.{id:016x}")
}

impl Slices {
    pub fn new(pool: Pool) -> Result<Slices> {
        Ok(Slices {
            pool,
            next_id: AtomicU64::new(u64::from_be_bytes(crate::digest::random_bytes()?)),
        })
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The slice lists of `ino`'s chunks `indexes` (absent: empty).
    fn lists(&self, meta: &dyn Meta, ino: Ino, indexes: &[u64]) -> Result<Vec<ChunkList>> {
        let keys: Vec<[u8; 16]> = indexes.iter().map(|&i| keys::chunk(ino, i)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let mut out = vec![ChunkList::default(); indexes.len()];
        meta.multi_get(Cf::Chunks, &refs, &mut |i, v| {
            if let Some(v) = v {
                out[i] = decode_chunk_list(v)?;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Chunk `index`'s bytes `from..to` (chunk offsets) into `out`; false if an object listed
    /// is gone (the list changed under the reader).
    fn read_chunk(
        &self,
        ino: Ino,
        index: u64,
        list: &ChunkList,
        from: u32,
        out: &mut [u8],
    ) -> Result<bool> {
        let to = from + out.len() as u32;
        // Per object, the pieces wanted: (offset in the object, length, offset in `out`).
        let mut wanted: BTreeMap<u64, Vec<(u32, u32, u32)>> = BTreeMap::new();
        for s in &list.slices {
            let (lo, hi) = (s.pos.max(from), (s.pos + s.len).min(to));
            if lo < hi {
                let piece = (s.skip + lo - s.pos, hi - lo, lo - from);
                wanted.entry(s.id).or_default().push(piece);
            }
        }
        for (at, len, dst) in wanted.remove(&INLINE).unwrap_or_default() {
            let got = inline_piece(list, at, len)?;
            out[dst as usize..dst as usize + got.len()].copy_from_slice(got);
        }
        // One read per object, of the span its pieces cover (one change's pieces lie side by
        // side in its object).
        for (id, pieces) in wanted {
            let start = pieces.iter().map(|p| p.0).min().unwrap_or(0);
            let end = pieces.iter().map(|p| p.0 + p.1).max().unwrap_or(0);
            let name = object(ino, index, id);
            let Some(bytes) = self
                .pool
                .read(&name, start as u64, (end - start) as usize)?
            else {
                return Ok(false);
            };
            for (at, len, dst) in pieces {
                let src = ((at - start) as usize).min(bytes.len());
                let got = &bytes[src..(src + len as usize).min(bytes.len())];
                out[dst as usize..dst as usize + got.len()].copy_from_slice(got);
            }
        }
        Ok(true)
    }

    /// Lays the writes of `e` that fall in chunk `index` over `list`: inline while the list's
    /// live inline bytes stay within `INLINE_MAX`, else as one new object.
    fn store_writes(&self, ino: Ino, index: u64, e: &Edits, list: &mut ChunkList) -> Result<()> {
        let base = index * CHUNK;
        let (mut bytes, mut slices) = (Vec::new(), Vec::new());
        for (at, b) in e.extents_in(base, base + CHUNK) {
            let (lo, hi) = (at.max(base), (at + b.len() as u64).min(base + CHUNK));
            slices.push(Slice {
                pos: (lo - base) as u32,
                len: (hi - lo) as u32,
                skip: bytes.len() as u32,
                id: INLINE,
            });
            bytes.extend_from_slice(&b[(lo - at) as usize..(hi - at) as usize]);
        }
        if slices.is_empty() {
            return Ok(());
        }
        let (id, skip) = match inline_bytes(list) + bytes.len() <= INLINE_MAX {
            true => {
                let at = list.inline.len() as u32;
                list.inline.extend_from_slice(&bytes);
                (INLINE, at)
            }
            false => {
                let id = self.new_id();
                self.pool.put(&object(ino, index, id), &bytes)?;
                (id, 0)
            }
        };
        for s in slices {
            overlay(
                &mut list.slices,
                Slice {
                    id,
                    skip: s.skip + skip,
                    ..s
                },
            );
        }
        Ok(())
    }

    /// Chunk `index` as `list` describes it, in one piece: inline if it is small enough,
    /// else one new object.
    fn compact(&self, ino: Ino, index: u64, list: &ChunkList) -> Result<ChunkList> {
        let end = list_end(&list.slices);
        let mut bytes = vec![0u8; end as usize];
        if !self.read_chunk(ino, index, list, 0, &mut bytes)? {
            return Err(Error::Conflict); // changed meanwhile: the operation runs again
        }
        let whole = |id| Slice {
            pos: 0,
            len: end,
            skip: 0,
            id,
        };
        if bytes.len() <= INLINE_MAX {
            return Ok(ChunkList {
                slices: vec![whole(INLINE)],
                inline: bytes,
            });
        }
        let id = self.new_id();
        self.pool.put(&object(ino, index, id), &bytes)?;
        Ok(ChunkList {
            slices: vec![whole(id)],
            inline: Vec::new(),
        })
    }

    /// Deletes every object no slice list references and older than `grace`.
    pub fn collect(&self, meta: &dyn Meta, grace: Duration) -> Result<Collected> {
        let referenced = self.referenced(meta)?;
        let names = self.stored()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut out = Collected {
            objects: names.len(),
            referenced: referenced.len(),
            removed: 0,
        };
        for name in names.iter().filter(|n| !referenced.contains(*n)) {
            let Some((_, mtime)) = self.pool.stat(name)? else {
                continue;
            };
            if now.as_secs() as i64 - mtime >= grace.as_secs() as i64 {
                self.pool.remove(name)?;
                out.removed += 1;
            }
        }
        Ok(out)
    }

    /// Every object in the filesystem's namespace.
    fn stored(&self) -> Result<HashSet<String>> {
        let mut names = HashSet::new();
        self.pool.list(&mut |name| {
            names.insert(name.to_owned());
            Ok(())
        })?;
        Ok(names)
    }

    /// Every object some slice list names.
    fn referenced(&self, meta: &dyn Meta) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        meta.scan(Cf::Chunks, &[], None, &mut |k, v| {
            if let (Some((ino, index)), Ok(list)) = (keys::decode_chunk(k), decode_chunk_list(v)) {
                let ids = list.slices.iter().filter(|s| s.id != INLINE);
                out.extend(ids.map(|s| object(ino, index, s.id)));
            }
            Ok(true)
        })?;
        Ok(out)
    }
}

/// `list` with `new` laid over it: what it covers of earlier slices is cut away.
fn overlay(list: &mut Vec<Slice>, new: Slice) {
    let (lo, hi) = (new.pos, new.pos + new.len);
    let mut out = Vec::with_capacity(list.len() + 2);
    for s in list.drain(..) {
        let end = s.pos + s.len;
        if end <= lo || s.pos >= hi {
            out.push(s);
            continue;
        }
        if s.pos < lo {
            out.push(Slice {
                len: lo - s.pos,
                ..s
            });
        }
        if end > hi {
            out.push(Slice {
                pos: hi,
                len: end - hi,
                skip: s.skip + (hi - s.pos),
                id: s.id,
            });
        }
    }
    out.push(new);
    out.sort_by_key(|s| s.pos);
    *list = out;
}

/// `list` without anything at or past chunk offset `end`.
fn clip(list: &mut Vec<Slice>, end: u32) {
    list.retain(|s| s.pos < end);
    for s in list.iter_mut() {
        s.len = s.len.min(end - s.pos);
    }
}

fn list_end(list: &[Slice]) -> u32 {
    list.iter().map(|s| s.pos + s.len).max().unwrap_or(0)
}

/// Bytes of `list`'s inline slices.
fn inline_bytes(list: &ChunkList) -> usize {
    let inline = list.slices.iter().filter(|s| s.id == INLINE);
    inline.map(|s| s.len as usize).sum()
}

/// `len` inline bytes of `list` from `at`.
fn inline_piece(list: &ChunkList, at: u32, len: u32) -> Result<&[u8]> {
    let (from, to) = (at as usize, at as usize + len as usize);
    list.inline.get(from..to).ok_or_else(|| {
        Error::Corrupt(format!(
            "slice list: inline bytes {from}..{to} of {}",
            list.inline.len()
        ))
    })
}

/// `list` keeping only the inline bytes its slices still use.
fn repack(list: &mut ChunkList) -> Result<()> {
    let mut kept = Vec::with_capacity(inline_bytes(list));
    for s in list.slices.iter().filter(|s| s.id == INLINE) {
        kept.extend_from_slice(inline_piece(list, s.skip, s.len)?);
    }
    let mut at = 0;
    for s in list.slices.iter_mut().filter(|s| s.id == INLINE) {
        s.skip = at;
        at += s.len;
    }
    list.inline = kept;
    Ok(())
}

/// Stores `list` as chunk `index` of `ino` (deletes it when empty), unused inline bytes dropped.
fn put_list(w: &mut dyn Writes, ino: Ino, index: u64, mut list: ChunkList) -> Result<()> {
    let key = keys::chunk(ino, index);
    repack(&mut list)?;
    match list.slices.is_empty() {
        true => w.delete(Cf::Chunks, &key),
        false => w.put(Cf::Chunks, &key, &encode_chunk_list(&list)),
    }
    Ok(())
}

impl Data for Slices {
    fn describe(&self) -> String {
        self.pool.describe().to_owned()
    }

    /// A chunk: a sequential writer stores whole objects, one commit each.
    fn write_back(&self) -> usize {
        CHUNK as usize
    }

    fn read(&self, meta: &dyn Meta, ino: Ino, offset: u64, end: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; (end - offset) as usize];
        if offset >= end {
            return Ok(out);
        }
        let indexes: Vec<u64> = (offset / CHUNK..=(end - 1) / CHUNK).collect();
        'again: for _ in 0..READ_ATTEMPTS {
            out.fill(0);
            let lists = self.lists(meta, ino, &indexes)?;
            for (&i, list) in indexes.iter().zip(&lists) {
                let base = i * CHUNK;
                let (lo, hi) = (offset.max(base), end.min(base + CHUNK));
                let dst = &mut out[(lo - offset) as usize..(hi - offset) as usize];
                if !self.read_chunk(ino, i, list, (lo - base) as u32, dst)? {
                    continue 'again;
                }
            }
            return Ok(out);
        }
        Err(Error::Backend(format!(
            "inode {ino}: data objects kept vanishing while read (RADOS namespace damaged?)"
        )))
    }

    fn apply(&self, meta: &dyn Meta, w: &mut dyn Writes, ino: Ino, e: &Edits) -> Result<()> {
        let kept = e.kept();
        let gone_from = kept.div_ceil(CHUNK); // chunks from here on hold nothing kept
        if kept < e.stored() {
            w.delete_range(
                Cf::Chunks,
                &keys::chunk(ino, gone_from),
                &keys::chunk(ino + 1, 0),
            );
        }
        let mut touched = BTreeSet::new();
        if kept < e.stored() && !kept.is_multiple_of(CHUNK) {
            touched.insert(kept / CHUNK);
        }
        for (at, b) in e.extents() {
            touched.extend(at / CHUNK..=(at + b.len() as u64 - 1) / CHUNK);
        }
        let loaded: Vec<u64> = touched.iter().copied().filter(|&i| i < gone_from).collect();
        let mut lists: BTreeMap<u64, ChunkList> = loaded
            .iter()
            .copied()
            .zip(self.lists(meta, ino, &loaded)?)
            .collect();
        for i in touched {
            let mut list = lists.remove(&i).unwrap_or_default();
            clip(
                &mut list.slices,
                kept.saturating_sub(i * CHUNK).min(CHUNK) as u32,
            );
            self.store_writes(ino, i, e, &mut list)?;
            let objects = list.slices.iter().filter(|s| s.id != INLINE).map(|s| s.id);
            let objects = objects.collect::<BTreeSet<_>>().len();
            if objects > MAX_OBJECTS || list.slices.len() > MAX_SLICES {
                list = self.compact(ino, i, &list)?;
            }
            put_list(w, ino, i, list)?;
        }
        Ok(())
    }

    fn check(&self, meta: &dyn Meta, owner: &dyn Fn(Ino) -> Owner) -> Result<Checked> {
        let mut out = Checked::default();
        let stored = self.stored()?;
        let mut reported = BTreeSet::new();
        meta.scan(Cf::Chunks, &[], None, &mut |k, v| {
            out.units += 1;
            let Some((ino, index)) = keys::decode_chunk(k) else {
                out.findings
                    .push(finding(0, format!("chunk key {k:?}"), Fix::None));
                return Ok(true);
            };
            let list = match decode_chunk_list(v) {
                Ok(list) => list,
                Err(e) => {
                    out.findings.push(finding(
                        ino,
                        format!("inode {ino} chunk {index}: {e}"),
                        Fix::None,
                    ));
                    return Ok(true);
                }
            };
            let missing = list.slices.iter().find(|s| match s.id {
                INLINE => inline_piece(&list, s.skip, s.len).is_err(),
                id => !stored.contains(&object(ino, index, id)),
            });
            if let Some(s) = missing {
                let what = match s.id {
                    INLINE => format!("inline bytes {}+{}", s.skip, s.len),
                    id => format!("object {}", object(ino, index, id)),
                };
                let problem = format!("inode {ino} chunk {index}: {what} is missing");
                out.findings.push(finding(ino, problem, Fix::None));
            }
            let end = index * CHUNK + list_end(&list.slices) as u64;
            let found = super::misplaced(ino, owner(ino), index * CHUNK, end, &mut reported);
            out.findings.extend(found);
            Ok(true)
        })?;
        Ok(out)
    }

    fn trim(&self, meta: &dyn Meta, w: &mut dyn Writes, ino: Ino, size: u64) -> Result<()> {
        w.delete_range(
            Cf::Chunks,
            &keys::chunk(ino, size.div_ceil(CHUNK)),
            &keys::chunk(ino + 1, 0),
        );
        if !size.is_multiple_of(CHUNK) {
            let i = size / CHUNK;
            let mut list = self.lists(meta, ino, &[i])?.remove(0);
            if list_end(&list.slices) as u64 > size % CHUNK {
                clip(&mut list.slices, (size % CHUNK) as u32);
                put_list(w, ino, i, list)?;
            }
        }
        Ok(())
    }

    fn collect(&self, meta: &dyn Meta, grace: Duration) -> Result<usize> {
        Ok(Slices::collect(self, meta, grace)?.removed)
    }

    fn capacity(&self) -> Option<Result<super::Capacity>> {
        Some(
            self.pool
                .cluster_space()
                .map(|(total, used, available)| super::Capacity {
                    total,
                    free: total.saturating_sub(used),
                    available,
                }),
        )
    }
}

fn finding(ino: Ino, problem: String, fix: Fix) -> DataFinding {
    DataFinding { ino, problem, fix }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pos: u32, len: u32, skip: u32, id: u64) -> Slice {
        Slice { pos, len, skip, id }
    }

    #[test]
    fn a_new_slice_cuts_what_it_covers() {
        let mut list = vec![s(0, 10, 0, 1)];
        overlay(&mut list, s(3, 4, 0, 2));
        assert_eq!(list, vec![s(0, 3, 0, 1), s(3, 4, 0, 2), s(7, 3, 7, 1)]);
        overlay(&mut list, s(0, 10, 5, 3));
        assert_eq!(list, vec![s(0, 10, 5, 3)]);
        overlay(&mut list, s(20, 2, 0, 4));
        assert_eq!(
            list.len(),
            2,
            "a slice past the others leaves a hole between"
        );
    }

    #[test]
    fn repacking_keeps_only_the_inline_bytes_in_use_and_in_order() {
        let mut list = ChunkList {
            slices: vec![s(0, 2, 4, INLINE), s(2, 3, 0, 7), s(5, 2, 0, INLINE)],
            inline: b"abcdefgh".to_vec(),
        };
        repack(&mut list).unwrap();
        assert_eq!(list.inline, b"efab");
        assert_eq!(list.slices[0], s(0, 2, 0, INLINE));
        assert_eq!(
            list.slices[1],
            s(2, 3, 0, 7),
            "object slices are left alone"
        );
        assert_eq!(list.slices[2], s(5, 2, 2, INLINE));
        assert_eq!(inline_bytes(&list), 4);
        let mut bad = ChunkList {
            slices: vec![s(0, 9, 0, INLINE)],
            inline: b"short".to_vec(),
        };
        assert!(matches!(repack(&mut bad), Err(Error::Corrupt(_))));
    }

    #[test]
    fn clipping_drops_and_shortens_slices_past_the_end() {
        let mut list = vec![s(0, 4, 0, 1), s(4, 4, 0, 2), s(10, 2, 0, 3)];
        clip(&mut list, 6);
        assert_eq!(list, vec![s(0, 4, 0, 1), s(4, 2, 0, 2)]);
        assert_eq!(list_end(&list), 6);
    }
}
