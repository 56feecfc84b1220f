//! `ObjectCreated:Put` for written files: exactly one per writing open, with the final
//! size and eTag, at the last close of all its descriptors, and in the store once any
//! close(2) of it has returned.
//!
//! The kernel sends a FLUSH at every close(2) (and close waits for it), but the RELEASE of
//! the last descriptor of an open only after close has returned. So a close that finds the
//! file written since its last Put records a **held** Put: in the queue (it survives kill -9)
//! but not deliverable, and its object's later events wait behind it. A later write leaves
//! it as it is (if lunafs dies now, the last closed state is the one announced); the next
//! close replaces it with one for the new content, in one batch; the release of the open
//! confirms it (in memory: the hold ends). After a restart nothing is held, so what the
//! last close recorded is delivered. `echo x > f` (bash opens with O_TRUNC, dup2s, closes
//! the first descriptor, writes, closes), `dd`, `cp`, `dup` and forked children closing
//! inherited descriptors all give one Put.
//!
//! The eTag is an MD5 fed by the writes while they arrive in order from offset 0 (cp,
//! rsync, tar), else computed from the content when the Put is recorded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use md5::{Digest, Md5};
use parking_lot::Mutex;

use super::{Change, EventKind};
use crate::core::Core;
use crate::error::Result;
use crate::store::codec::events::EtagRecord;
use crate::store::codec::Kind;
use crate::store::keys::Ino;

/// An object open for writing in a watched bucket.
struct Writing {
    /// Open file descriptions for writing (dup'd descriptors share one).
    opens: u32,
    /// Changed since the last Put was recorded.
    written: bool,
    /// uid of the process that last wrote or closed it.
    uid: u32,
    /// The MD5 of bytes `0..next`, while writes have come in order.
    md5: Option<(Md5, u64)>,
    /// The held Put (one entry per notification that wants it), if any.
    held: Vec<u64>,
}

/// What `put_txn` did.
enum Recorded {
    /// The file has no name left: no Put.
    Removed,
    /// It is no longer in a watched bucket (or nowhere to be named).
    Nowhere,
    Put(super::Enqueued),
}

#[derive(Default)]
pub struct Writes {
    open: Mutex<HashMap<Ino, Writing>>,
    /// How many objects `open` holds: writes skip its lock while it is none.
    tracked: AtomicUsize,
    /// Held Puts: sequence number to object.
    held: Mutex<HashMap<u64, Ino>>,
}

impl Writes {
    pub(super) fn held(&self) -> HashMap<u64, Ino> {
        self.held.lock().clone()
    }

    fn tracking(&self) -> bool {
        self.tracked.load(Ordering::Relaxed) > 0
    }
}

impl Core {
    /// An open for writing (`truncated`: a new file or O_TRUNC) by `uid`; pairs with
    /// `end_write`.
    pub fn begin_write(&self, ino: Ino, uid: u32, truncated: bool) -> Result<()> {
        if !self.events.any_watched() {
            return Ok(());
        }
        let inode = self.getattr(ino)?;
        if inode.kind != Kind::File || !self.events.watched(inode.bucket) {
            return Ok(());
        }
        // Under the object's lock, as every change of an object's writing state is.
        let _held = self.locks.lock(&[ino]);
        let w = &self.events.writes;
        let mut open = w.open.lock();
        let entry = open.entry(ino).or_insert_with(|| {
            w.tracked.fetch_add(1, Ordering::Relaxed);
            Writing {
                opens: 0,
                written: false,
                uid,
                md5: (inode.size == 0).then(|| (Md5::new(), 0)),
                held: Vec::new(),
            }
        });
        entry.opens += 1;
        entry.uid = uid;
        if truncated {
            entry.written = true;
            entry.md5 = Some((Md5::new(), 0));
        }
        Ok(())
    }

    /// A write of `data` at `offset` was committed (under the object's lock). The MD5 is
    /// fed outside the map's lock, which every writer of every watched object takes.
    pub(in crate::core) fn note_write(&self, ino: Ino, offset: u64, data: &[u8]) {
        let w = &self.events.writes;
        if !w.tracking() {
            return;
        }
        let hasher = match w.open.lock().get_mut(&ino) {
            Some(state) => {
                state.written = true;
                state.md5.take()
            }
            None => return,
        };
        let fed = match hasher {
            Some((mut h, next)) if next == offset => {
                h.update(data);
                Some((h, next + data.len() as u64))
            }
            _ => None,
        };
        if let Some(state) = w.open.lock().get_mut(&ino) {
            state.md5 = fed;
        }
    }

    /// A handler call changed `ino`'s data: a writer's running MD5 no longer matches it.
    pub(in crate::core) fn note_rewritten(&self, ino: Ino) {
        let w = &self.events.writes;
        if !w.tracking() {
            return;
        }
        if let Some(state) = w.open.lock().get_mut(&ino) {
            state.md5 = None;
        }
    }

    /// The size of `ino` was set (under the object's lock).
    pub(in crate::core) fn note_truncate(&self, ino: Ino, size: u64) {
        let w = &self.events.writes;
        if !w.tracking() {
            return;
        }
        if let Some(state) = w.open.lock().get_mut(&ino) {
            state.written = true;
            state.md5 = match state.md5.take() {
                _ if size == 0 => Some((Md5::new(), 0)),
                Some((h, next)) if next == size => Some((h, next)),
                _ => None,
            };
        }
    }

    /// A close(2) of a descriptor opened for writing, by `uid` (FUSE flush, which close
    /// waits for): records a held Put if the file changed since the last one.
    pub fn flush_write(&self, ino: Ino, uid: u32) -> Result<()> {
        // Under the object's lock: no write comes between the running MD5 and the size.
        let _held = self.locks.lock(&[ino]);
        self.store_held(ino)?; // once close returns, the data is stored
        if !self.events.writes.tracking() {
            return Ok(());
        }
        self.with_writing(ino, |this, state| {
            state.uid = uid;
            if state.written {
                this.record_put(ino, state, true)?;
            }
            Ok(())
        })
    }

    /// The release of an open made with `begin_write` (its last descriptor closed): its
    /// Put is confirmed, or recorded now if the file changed since the last close.
    pub fn end_write(&self, ino: Ino) -> Result<()> {
        let _held = self.locks.lock(&[ino]);
        // A failure to store is reported, after the open's bookkeeping (the writes stay held).
        let stored = self.store_held(ino);
        if !self.events.writes.tracking() {
            return stored;
        }
        let r = self.with_writing(ino, |this, state| {
            state.opens = state.opens.saturating_sub(1);
            if state.written {
                this.record_put(ino, state, false)
            } else {
                this.confirm(std::mem::take(&mut state.held));
                Ok(())
            }
        });
        let w = &self.events.writes;
        let mut open = w.open.lock();
        if open.get(&ino).is_some_and(|s| s.opens == 0) {
            if let Some(state) = open.remove(&ino) {
                w.tracked.fetch_sub(1, Ordering::Relaxed);
                // Only after a failed commit: its hold ends, so what was recorded goes out.
                self.confirm(state.held);
            }
        }
        stored.and(r)
    }

    /// Runs `f` on the writing state of `ino` (taken out of the map meanwhile, so the
    /// map's lock is not held while `f` commits; the caller holds the object's lock, which
    /// every change of the state takes).
    fn with_writing(
        &self,
        ino: Ino,
        f: impl FnOnce(&Core, &mut Writing) -> Result<()>,
    ) -> Result<()> {
        let w = &self.events.writes;
        let Some(mut state) = w.open.lock().remove(&ino) else {
            return Ok(());
        };
        let r = f(self, &mut state);
        w.open.lock().insert(ino, state);
        r
    }

    /// Records the Put of `ino` as it is now: held (at a close) or not (at the release),
    /// replacing a held one. The caller holds the object's lock. A failed commit leaves
    /// the file "written", so the next close or the release tries again.
    fn record_put(&self, ino: Ino, state: &mut Writing, held: bool) -> Result<()> {
        let recorded = self.transact("close", || self.put_txn(ino, state, held));
        match recorded? {
            Recorded::Removed => {
                // Removed while open: its Delete is queued; a Put after it would resurrect it.
                state.written = false;
                self.confirm(std::mem::take(&mut state.held));
            }
            Recorded::Nowhere => state.written = false,
            Recorded::Put(queued) => {
                self.replace_held(&queued, held, state);
                state.written = false;
                self.queued(queued);
            }
        }
        Ok(())
    }

    /// The Put of `ino` as it is now, replacing the held one, in one checked transaction.
    /// A Put to be `held` is held from before its commit: a dispatcher round reading the
    /// queue meanwhile (on a shared store, reading it from etcd) must not deliver it.
    fn put_txn(&self, ino: Ino, state: &Writing, hold: bool) -> Result<Recorded> {
        let mut txn = self.txn();
        let inode = txn.get(ino)?.clone();
        if inode.nlink == 0 {
            return Ok(Recorded::Removed);
        }
        let Some(place) = self.place_of(&inode)? else {
            return Ok(Recorded::Nowhere);
        };
        let md5 = match state.md5.clone() {
            Some((h, next)) if next == inode.size => crate::digest::md5_hex(h),
            _ => self.content_md5(ino, inode.size)?,
        };
        let batch = &mut txn.batch;
        batch.put_etag(
            ino,
            &EtagRecord {
                size: inode.size,
                mtime: inode.mtime,
                md5: md5.clone(),
            },
        );
        for &seq in &state.held {
            batch.delete_event(seq);
        }
        let change = Change {
            kind: EventKind::Put,
            ino,
            size: inode.size,
            etag: md5,
            uid: state.uid,
            ..place.change()
        };
        let queued = self.queue(batch, change)?;
        let held = &self.events.writes.held;
        if hold {
            held.lock()
                .extend(queued.seqs.iter().map(|&seq| (seq, ino)));
        }
        if let Err(e) = txn.commit() {
            let mut held = held.lock();
            for seq in queued.seqs.iter().filter(|_| hold) {
                held.remove(seq);
            }
            return Err(e);
        }
        Ok(Recorded::Put(queued))
    }

    /// After a Put was recorded: the old held entries are gone from the queue, and the new
    /// ones are held (`hold`: `put_txn` marked them) or not.
    fn replace_held(&self, queued: &super::Enqueued, hold: bool, state: &mut Writing) {
        let old = std::mem::take(&mut state.held);
        let events = &self.events;
        let mut held = events.writes.held.lock();
        for seq in &old {
            held.remove(seq);
        }
        let n = old.len() as u64;
        let _ = events
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(n))
            });
        if hold {
            state.held = queued.seqs.clone();
        }
    }

    /// Ends the hold of `seqs`: they may be delivered now.
    fn confirm(&self, seqs: Vec<u64>) {
        let Some(&lowest) = seqs.iter().min() else {
            return;
        };
        {
            let mut held = self.events.writes.held.lock();
            for seq in &seqs {
                held.remove(seq);
            }
        }
        self.events.wake(lowest);
    }
}
