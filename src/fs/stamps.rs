//! Close-to-open for the page cache: an open keeps the kernel's cached pages of a file only
//! if the file is as this mount last saw it (same size, mtime and ctime). On a shared store
//! another mount may have closed a new version of it since; the open then drops the pages,
//! and the reads that follow come from the store, as NFS does.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::store::codec::{Inode, Timestamp};
use crate::store::keys::Ino;

/// Files remembered at most; past it the memory starts over (the cost: one cache refill).
const MAX_FILES: usize = 100_000;

type Stamp = (u64, Timestamp, Timestamp);

#[derive(Default)]
pub struct Stamps(Mutex<HashMap<Ino, Stamp>>);

fn stamp(inode: &Inode) -> Stamp {
    (inode.size, inode.mtime, inode.ctime)
}

impl Stamps {
    /// At open: whether the cached pages are still good; remembers the file as it is now.
    pub fn still_fresh(&self, inode: &Inode) -> bool {
        let mut seen = self.0.lock();
        let fresh = seen.get(&inode.ino) == Some(&stamp(inode));
        self.remember_in(&mut seen, inode);
        fresh
    }

    /// After this mount changed the file (a close after writing): its pages are the truth.
    pub fn remember(&self, inode: &Inode) {
        self.remember_in(&mut self.0.lock(), inode);
    }

    fn remember_in(&self, seen: &mut HashMap<Ino, Stamp>, inode: &Inode) {
        if seen.len() >= MAX_FILES && !seen.contains_key(&inode.ino) {
            seen.clear();
        }
        seen.insert(inode.ino, stamp(inode));
    }
}
