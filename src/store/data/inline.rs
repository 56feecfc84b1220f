//! File bytes in the metadata engine itself: fixed-size chunks (`schema::CHUNK_SIZE`) in the
//! `chunks` family, key (inode, chunk index). A missing chunk is a hole; a chunk never holds
//! bytes past the file's size (a truncate trims it). A change rewrites only the chunks it
//! touches, reading back a chunk only where the change leaves part of its stored bytes.

use std::collections::{BTreeSet, HashMap};

use super::{paint, Checked, Data, DataFinding, Edits, Fix, Owner};
use crate::error::Result;
use crate::store::codec::{decode_blob, encode_blob};
use crate::store::keys::{self, Ino};
use crate::store::meta::{Meta, Writes};
use crate::store::schema::{Cf, CHUNK_SIZE};

const C: u64 = CHUNK_SIZE;

pub struct Inline;

impl Data for Inline {
    fn describe(&self) -> String {
        "inline".into()
    }

    fn read(&self, meta: &dyn Meta, ino: Ino, offset: u64, end: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; (end - offset) as usize];
        if offset >= end {
            return Ok(out);
        }
        let first = offset / C;
        let keys: Vec<[u8; 16]> = (first..=(end - 1) / C)
            .map(|i| keys::chunk(ino, i))
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        meta.multi_get(Cf::Chunks, &refs, &mut |i, v| {
            if let Some(v) = v {
                let at = (first + i as u64) * C;
                paint(&mut out, offset, std::iter::once((at, decode_blob(v)?)));
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn apply(&self, meta: &dyn Meta, w: &mut dyn Writes, ino: Ino, e: &Edits) -> Result<()> {
        let kept = e.kept();
        if kept < e.stored() {
            let from = keys::chunk(ino, kept.div_ceil(C));
            w.delete_range(Cf::Chunks, &from, &keys::chunk(ino + 1, 0));
        }
        // The chunk the cut falls in keeps a part; every chunk a write touches changes.
        let mut touched = BTreeSet::new();
        if kept < e.stored() && !kept.is_multiple_of(C) {
            touched.insert(kept / C);
        }
        for (at, b) in e.extents() {
            touched.extend(at / C..=(at + b.len() as u64 - 1) / C);
        }
        // Stored bytes are read back only where they survive and no write covers them.
        let kept_in = |i: u64| kept.saturating_sub(i * C).min(C);
        let wanted: Vec<u64> = touched
            .iter()
            .copied()
            .filter(|&i| kept_in(i) > 0 && !e.covers(i * C, i * C + kept_in(i)))
            .collect();
        let stored = self.chunks(meta, ino, &wanted)?;
        for i in touched {
            let base = i * C;
            let mut chunk = stored.get(&i).cloned().unwrap_or_default();
            chunk.truncate(kept_in(i) as usize);
            let end = e
                .extents_in(base, base + C)
                .map(|(at, b)| (at + b.len() as u64).min(base + C) - base)
                .max()
                .unwrap_or(0);
            if (chunk.len() as u64) < end {
                chunk.resize(end as usize, 0);
            }
            paint(&mut chunk, base, e.extents_in(base, base + C));
            w.put(Cf::Chunks, &keys::chunk(ino, i), &encode_blob(&chunk));
        }
        Ok(())
    }

    fn check(&self, meta: &dyn Meta, owner: &dyn Fn(Ino) -> Owner) -> Result<Checked> {
        let mut out = Checked::default();
        let mut reported = BTreeSet::new();
        meta.scan(Cf::Chunks, &[], None, &mut |k, v| {
            out.units += 1;
            let Some((ino, index)) = keys::decode_chunk(k) else {
                out.findings.push(DataFinding {
                    ino: 0,
                    problem: format!("chunk key {k:?}"),
                    fix: Fix::None,
                });
                return Ok(true);
            };
            let found = match decode_blob(v) {
                Ok(data) => {
                    let start = index * C;
                    super::misplaced(
                        ino,
                        owner(ino),
                        start,
                        start + data.len() as u64,
                        &mut reported,
                    )
                }
                Err(e) if matches!(owner(ino), Owner::File { .. }) => Some(DataFinding {
                    ino,
                    problem: format!("inode {ino} chunk {index}: {e}"),
                    fix: Fix::None,
                }),
                Err(_) => super::misplaced(ino, owner(ino), 0, 0, &mut reported),
            };
            out.findings.extend(found);
            Ok(true)
        })?;
        Ok(out)
    }

    fn trim(&self, meta: &dyn Meta, w: &mut dyn Writes, ino: Ino, size: u64) -> Result<()> {
        let from = keys::chunk(ino, size.div_ceil(C));
        w.delete_range(Cf::Chunks, &from, &keys::chunk(ino + 1, 0));
        if !size.is_multiple_of(C) {
            let i = size / C;
            if let Some(mut chunk) = self.chunks(meta, ino, &[i])?.remove(&i) {
                if chunk.len() as u64 > size % C {
                    chunk.truncate((size % C) as usize);
                    w.put(Cf::Chunks, &keys::chunk(ino, i), &encode_blob(&chunk));
                }
            }
        }
        Ok(())
    }
}

impl Inline {
    /// The stored chunks of `ino` among `indexes`.
    fn chunks(&self, meta: &dyn Meta, ino: Ino, indexes: &[u64]) -> Result<HashMap<u64, Vec<u8>>> {
        let keys: Vec<[u8; 16]> = indexes.iter().map(|&i| keys::chunk(ino, i)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let mut out = HashMap::new();
        meta.multi_get(Cf::Chunks, &refs, &mut |i, v| {
            if let Some(v) = v {
                out.insert(indexes[i], decode_blob(v)?.to_vec());
            }
            Ok(())
        })?;
        Ok(out)
    }
}
