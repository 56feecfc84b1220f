//! Per-inode write locks, one per inode in use. Every operation that reads and rewrites
//! inode records locks those inodes first (all at once, in inode order, so two operations
//! can never wait on each other in a cycle). Reads take no lock: a RocksDB read sees whole
//! batches.
//!
//! The locks are exact, not striped: a handler call holds its object's lock for as long as
//! it runs (up to its time limit), and that must hold up only operations on that object,
//! never a write to a file that happens to share a stripe. A lock lives in a sharded table
//! while someone holds or waits for it and is dropped with its last user.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{ArcMutexGuard, Mutex, RawMutex};

use crate::store::keys::Ino;

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Ino, Arc<Mutex<()>>>>;

pub struct Locks {
    shards: Vec<Shard>,
}

/// The locks of one operation, released when this drops.
pub struct Held<'a> {
    locks: &'a Locks,
    guards: Vec<(Ino, ArcMutexGuard<RawMutex, ()>)>,
}

impl Default for Locks {
    fn default() -> Self {
        Self::new()
    }
}

impl Locks {
    pub fn new() -> Self {
        Locks {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ino: Ino) -> &Shard {
        // Fibonacci hashing spreads consecutive inode numbers over the shards.
        &self.shards[(ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS]
    }

    /// Locks every inode of `inos` (duplicates allowed) until the returned guard drops.
    /// Never waits for one lock while holding another: if one is taken, the ones already
    /// held are let go, that one is waited for, and all are tried again. So an operation
    /// waiting behind a long handler call on a file (unlink, rename) does not hold its
    /// directory meanwhile, and other operations in the directory go on.
    pub fn lock(&self, inos: &[Ino]) -> Held<'_> {
        let mut sorted = inos.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let entry = |ino: Ino| self.shard(ino).lock().entry(ino).or_default().clone();
        loop {
            let mut held = Held {
                locks: self,
                guards: Vec::with_capacity(sorted.len()),
            };
            let mut busy = None;
            for &ino in &sorted {
                let lock = entry(ino);
                match lock.try_lock_arc() {
                    Some(g) => held.guards.push((ino, g)),
                    None => {
                        busy = Some((ino, lock));
                        break;
                    }
                }
            }
            let Some((ino, lock)) = busy else {
                return held;
            };
            drop(held);
            if sorted.len() == 1 {
                return Held {
                    locks: self,
                    guards: vec![(ino, lock.lock_arc())],
                };
            }
            // Wait until it is free, then start over (someone may take it again first).
            drop(lock.lock_arc());
            self.forget(ino, lock);
        }
    }

    /// Drops our reference to `ino`'s lock, and its table entry if nobody else uses it.
    fn forget(&self, ino: Ino, lock: std::sync::Arc<Mutex<()>>) {
        let mut shard = self.shard(ino).lock();
        // The table's reference and ours: nobody else holds or waits for it.
        if Arc::strong_count(&lock) == 2 {
            shard.remove(&ino);
        }
        drop(lock);
    }

    /// How many inodes have a lock entry (held or waited for).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        for (ino, guard) in self.guards.drain(..) {
            let lock = ArcMutexGuard::mutex(&guard).clone();
            drop(guard);
            self.locks.forget(ino, lock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locking_the_same_inode_twice_in_one_call_does_not_deadlock() {
        let locks = Locks::new();
        let _held = locks.lock(&[5, 5, 9, 5]);
    }

    #[test]
    fn a_held_lock_blocks_only_its_own_inode_and_is_dropped_after_use() {
        let locks = Arc::new(Locks::new());
        let held = locks.lock(&[7]);
        let other = std::thread::spawn({
            let locks = locks.clone();
            move || {
                // Every other inode, including ones a striped table would share with 7.
                for ino in 8..5000 {
                    drop(locks.lock(&[ino]));
                }
            }
        });
        other.join().unwrap();
        assert_eq!(locks.entries(), 1);
        drop(held);
        assert_eq!(locks.entries(), 0);
    }
}
