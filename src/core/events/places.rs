//! Where an object is, for its events: its bucket and key, found from the inode alone
//! (every inode keeps its primary name and the directory holding it, see `Inode::name`),
//! walking up to the bucket; and what it holds: the MD5 of its content (its eTag), kept with
//! the object while it does not change.

use md5::{Digest, Md5};

use super::Change;
use crate::core::{Core, ROOT};
use crate::error::{Error, Result};
use crate::store::codec::events::EtagRecord;
use crate::store::codec::{Inode, Kind};
use crate::store::keys::Ino;
use crate::store::Batch;

/// Bytes read at a time when an eTag has to be computed from the content.
const HASH_STEP: u64 = 1 << 20;

/// Deeper paths than this mean a damaged parent pointer (a cycle).
const MAX_DEPTH: usize = 4096;

/// An object's bucket and key.
#[derive(Clone)]
pub(super) struct Place {
    pub bucket: String,
    pub bucket_id: Ino,
    pub bucket_owner: u32,
    pub key: Vec<u8>,
}

impl Place {
    /// A change of the object here, to be completed by the caller.
    pub fn change(&self) -> Change {
        Change {
            kind: super::EventKind::Put,
            ino: 0,
            bucket: self.bucket.clone(),
            bucket_id: self.bucket_id,
            bucket_owner: self.bucket_owner,
            key: self.key.clone(),
            size: 0,
            etag: String::new(),
            uid: 0,
            time_ms: super::now_ms(),
            metadata: None,
            cause: None,
        }
    }

    /// The place of `rel` (a path below this one, "" for itself).
    pub fn below(&self, rel: &[u8]) -> Place {
        let key = match (self.key.is_empty(), rel.is_empty()) {
            (_, true) => self.key.clone(),
            (true, false) => rel.to_vec(),
            (false, false) => [&self.key[..], b"/", rel].concat(),
        };
        Place {
            key,
            ..self.clone()
        }
    }
}

impl Core {
    /// The bucket and key of `inode` (None for the root and for an inode no name reaches).
    pub(super) fn place_of(&self, inode: &Inode) -> Result<Option<Place>> {
        let (parent, name) = match self.primary_name(inode)? {
            Some(p) => p,
            None => return Ok(None),
        };
        self.place_in(parent, &name)
    }

    /// The bucket and key of `name` in directory `parent`; for the root itself, None.
    pub(super) fn place_in(&self, parent: Ino, name: &[u8]) -> Result<Option<Place>> {
        if parent == ROOT {
            // A bucket: the place of everything in it, with an empty key.
            let Some(d) = self.store.dentry(ROOT, name)? else {
                return Ok(None);
            };
            let bucket = self.getattr(d.ino)?;
            return Ok(Some(Place {
                bucket: String::from_utf8_lossy(name).into_owned(),
                bucket_id: bucket.ino,
                bucket_owner: bucket.uid,
                key: Vec::new(),
            }));
        }
        let mut parts: Vec<Vec<u8>> = vec![name.to_vec()];
        let mut dir = self.getattr(parent)?;
        loop {
            if parts.len() > MAX_DEPTH {
                return Err(Error::Corrupt(format!(
                    "inode {parent}: no path to the root"
                )));
            }
            let Some((up, dir_name)) = self.primary_name(&dir)? else {
                return Ok(None);
            };
            if up == ROOT {
                parts.reverse();
                return Ok(Some(Place {
                    bucket: String::from_utf8_lossy(&dir_name).into_owned(),
                    bucket_id: dir.ino,
                    bucket_owner: dir.uid,
                    key: parts.join(&b'/'),
                }));
            }
            parts.push(dir_name);
            dir = self.getattr(up)?;
        }
    }

    /// The directory and name an inode is known by: its recorded primary name while it
    /// holds, else one found by a scan (of the bucket for a file: a hard link whose primary
    /// name was removed).
    fn primary_name(&self, inode: &Inode) -> Result<Option<(Ino, Vec<u8>)>> {
        if inode.ino == ROOT {
            return Ok(None);
        }
        if !inode.name.is_empty()
            && self.store.dentry(inode.parent, &inode.name)?.map(|d| d.ino) == Some(inode.ino)
        {
            return Ok(Some((inode.parent, inode.name.clone())));
        }
        let scan_from = match inode.kind {
            Kind::Dir => inode.parent,
            _ => inode.bucket,
        };
        self.find_name(scan_from, inode.ino)
    }

    /// Depth-first search of directory `dir` for a name of `ino`.
    fn find_name(&self, dir: Ino, ino: Ino) -> Result<Option<(Ino, Vec<u8>)>> {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for (name, entry) in self.store.dentries(d)? {
                if entry.ino == ino {
                    return Ok(Some((d, name)));
                }
                if entry.kind == Kind::Dir {
                    stack.push(entry.ino);
                }
            }
        }
        Ok(None)
    }

    /// Every file at or under `ino`, with its path relative to `ino` (empty for `ino`
    /// itself, `a/b` below it).
    pub(super) fn files_under(&self, ino: Ino) -> Result<Vec<(Ino, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut stack = vec![(ino, Vec::new())];
        while let Some((i, rel)) = stack.pop() {
            match self.getattr(i)?.kind {
                Kind::File => out.push((i, rel)),
                Kind::Dir => {
                    for (name, d) in self.store.dentries(i)? {
                        let child = match rel.is_empty() {
                            true => name,
                            false => [&rel[..], b"/", &name].concat(),
                        };
                        stack.push((d.ino, child));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The MD5 of a file: the recorded one if the file has not changed since, else read and
    /// recorded in `batch`, so the next event does not read it again.
    pub(super) fn etag_of(&self, batch: &mut Batch<'_>, inode: &Inode) -> Result<String> {
        if let Some(rec) = self.store.etag(inode.ino)? {
            if let Some(md5) = rec.valid_for(inode.size, inode.mtime) {
                return Ok(md5.to_string());
            }
        }
        let md5 = self.content_md5(inode.ino, inode.size)?;
        batch.put_etag(
            inode.ino,
            &EtagRecord {
                size: inode.size,
                mtime: inode.mtime,
                md5: md5.clone(),
            },
        );
        Ok(md5)
    }

    pub(super) fn content_md5(&self, ino: Ino, size: u64) -> Result<String> {
        md5_of(size, |at, end| self.store.read(ino, at, end))
    }
}

/// The hex MD5 (an S3 eTag) of `size` bytes that `read(at, end)` returns, in 1 MiB steps.
pub(in crate::core) fn md5_of(
    size: u64,
    mut read: impl FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<String> {
    let mut h = Md5::new();
    let mut at = 0;
    while at < size {
        let end = size.min(at + HASH_STEP);
        h.update(read(at, end)?);
        at = end;
    }
    Ok(crate::digest::md5_hex(h))
}
