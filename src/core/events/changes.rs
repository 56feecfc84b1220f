//! The events of changes other than a written file's close, each queued into the batch of
//! the change itself:
//!
//! - unlink of an object's last name (or a handler's `remove()`): `ObjectRemoved:Delete`;
//! - rename of a file, or of a directory or bucket (every object under it):
//!   `ObjectCreated:Copy` at the new key and `ObjectRemoved:Delete` at the old one; with
//!   `RENAME_EXCHANGE`, `ObjectCreated:Copy` at each of the two keys;
//! - a handler call that changed the data: `ObjectCreated:Put`, with the MD5 and omap the
//!   call leaves;
//! - a change of the omap or other xattrs (setxattr, removexattr, a handler call that
//!   changed only those): `ObjectMetadata:Set`.
//!
//! Every event names the uid of the process that made the change.

use super::places::Place;
use super::{Change, Enqueued, EventKind};
use crate::core::{Core, Txn, ROOT};
use crate::error::Result;
use crate::store::codec::{Inode, Kind, Timestamp};
use crate::store::keys::Ino;
use crate::store::Batch;

/// One side of a rename: the directory, the name and the inode under it.
pub(in crate::core) type Side<'a> = (Ino, &'a [u8], Ino);

impl Core {
    /// Queues the Delete of the last name of `ino` (`name` in `parent`) into `txn`.
    pub(in crate::core) fn queue_delete(
        &self,
        txn: &mut Txn<'_>,
        (parent, name, ino): Side<'_>,
        uid: u32,
    ) -> Result<Enqueued> {
        if !self.events.watched(txn.get(parent)?.bucket) {
            return Ok(Enqueued::NONE);
        }
        let inode = txn.get(ino)?.clone();
        let Some(place) = self.place_in(parent, name)? else {
            return Ok(Enqueued::NONE);
        };
        let change = Change {
            kind: EventKind::Delete,
            ino,
            size: inode.size,
            uid,
            ..place.change()
        };
        self.queue(&mut txn.batch, change)
    }

    /// Queues Copy at the new place and Delete at the old one for `ino` (a file, or every
    /// file under a directory or bucket) moving from `from` to `to`. Runs before the
    /// rename's batch commits, so the store has the old names.
    pub(in crate::core) fn queue_rename(
        &self,
        txn: &mut Txn<'_>,
        from: Side<'_>,
        to: (Ino, &[u8]),
        uid: u32,
    ) -> Result<Enqueued> {
        let Some((old, new)) = self.rename_places(txn, (from.0, from.1), to, from.2)? else {
            return Ok(Enqueued::NONE);
        };
        let mut n = Enqueued::NONE;
        for (file, rel) in self.files_under(from.2)? {
            let inode = self.stored_inode(file)?;
            let etag = self.etag_of(&mut txn.batch, &inode)?;
            let copy = file_change(EventKind::Copy, &new.below(&rel), &inode, etag, uid);
            n.add(self.queue(&mut txn.batch, copy)?);
            let delete = file_change(
                EventKind::Delete,
                &old.below(&rel),
                &inode,
                String::new(),
                uid,
            );
            n.add(self.queue(&mut txn.batch, delete)?);
        }
        Ok(n)
    }

    /// Queues a Copy at each key of a `RENAME_EXCHANGE` of `a` and `b` (for directories,
    /// for every object under them): each object is now at the other's key.
    pub(in crate::core) fn queue_exchange(
        &self,
        txn: &mut Txn<'_>,
        a: Side<'_>,
        b: Side<'_>,
        uid: u32,
    ) -> Result<Enqueued> {
        let mut n = Enqueued::NONE;
        for (x, y) in [(a, b), (b, a)] {
            let Some((_, there)) = self.rename_places(txn, (x.0, x.1), (y.0, y.1), x.2)? else {
                continue;
            };
            for (file, rel) in self.files_under(x.2)? {
                let inode = self.stored_inode(file)?;
                let etag = self.etag_of(&mut txn.batch, &inode)?;
                let copy = file_change(EventKind::Copy, &there.below(&rel), &inode, etag, uid);
                n.add(self.queue(&mut txn.batch, copy)?);
            }
        }
        Ok(n)
    }

    /// The old and new place of a rename, None if neither bucket is watched.
    fn rename_places(
        &self,
        txn: &mut Txn<'_>,
        (parent, name): (Ino, &[u8]),
        (newparent, newname): (Ino, &[u8]),
        ino: Ino,
    ) -> Result<Option<(Place, Place)>> {
        let watched = match parent {
            // A bucket renamed: its objects move from one bucket name to the other, and
            // either name may be the one with notifications.
            ROOT => {
                self.events.watched(ino)
                    || self
                        .events
                        .subscriptions()
                        .is_some_and(|s| s.watches(&String::from_utf8_lossy(newname)))
            }
            _ => self.events.watched(txn.get(parent)?.bucket),
        };
        if !watched {
            return Ok(None);
        }
        let old = self.place_in(parent, name)?;
        let new = match newparent {
            ROOT => old.clone().map(|p| Place {
                bucket: String::from_utf8_lossy(newname).into_owned(),
                ..p
            }),
            _ => self.place_in(newparent, newname)?,
        };
        Ok(old.zip(new))
    }

    /// Queues the Put of a handler call that changed `ino`'s data, with the content's MD5
    /// and omap as the call leaves them.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::core) fn queue_call_put(
        &self,
        batch: &mut Batch<'_>,
        inode: &Inode,
        (size, mtime): (u64, Timestamp),
        (md5, metadata): (&str, super::Omap),
        uid: u32,
        cause: Option<&str>,
    ) -> Result<Enqueued> {
        if !self.events.watched(inode.bucket) {
            return Ok(Enqueued::NONE);
        }
        let Some(place) = self.place_of(inode)? else {
            return Ok(Enqueued::NONE);
        };
        batch.put_etag(
            inode.ino,
            &crate::store::codec::events::EtagRecord {
                size,
                mtime,
                md5: md5.to_string(),
            },
        );
        let change = Change {
            kind: EventKind::Put,
            ino: inode.ino,
            size,
            etag: md5.to_string(),
            uid,
            metadata: Some(metadata),
            cause: cause.map(str::to_string),
            ..place.change()
        };
        self.queue(batch, change)
    }

    /// Queues `ObjectMetadata:Set` for a change of `inode`'s omap or xattrs, `metadata`
    /// being the omap as the change leaves it (the batch is not committed yet).
    pub(in crate::core) fn queue_metadata(
        &self,
        batch: &mut Batch<'_>,
        inode: &Inode,
        metadata: super::Omap,
        uid: u32,
        cause: Option<&str>,
    ) -> Result<Enqueued> {
        if inode.kind != Kind::File || !self.events.watched(inode.bucket) {
            return Ok(Enqueued::NONE);
        }
        let Some(place) = self.place_of(inode)? else {
            return Ok(Enqueued::NONE);
        };
        let etag = self.etag_of(batch, inode)?;
        let change = Change {
            kind: EventKind::MetadataSet,
            ino: inode.ino,
            size: inode.size,
            etag,
            uid,
            metadata: Some(metadata),
            cause: cause.map(str::to_string),
            ..place.change()
        };
        self.queue(batch, change)
    }
}

fn file_change(kind: EventKind, place: &Place, inode: &Inode, etag: String, uid: u32) -> Change {
    Change {
        kind,
        ino: inode.ino,
        size: inode.size,
        etag,
        uid,
        ..place.change()
    }
}
