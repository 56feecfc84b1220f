//! Per-inode write locks, striped. Every operation that reads and rewrites inode records
//! locks those inodes first (all at once, in stripe order, so two operations can never wait
//! on each other in a cycle). Reads take no lock: a RocksDB read sees whole batches.

use parking_lot::{Mutex, MutexGuard};

use crate::store::keys::Ino;

const STRIPES: usize = 1024;

pub struct Locks {
    stripes: Vec<Mutex<()>>,
}

pub struct Held<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Default for Locks {
    fn default() -> Self {
        Self::new()
    }
}

impl Locks {
    pub fn new() -> Self {
        Locks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Locks every inode of `inos` (duplicates allowed) until the returned guard drops.
    pub fn lock(&self, inos: &[Ino]) -> Held<'_> {
        let mut idx: Vec<usize> = inos.iter().map(|&i| stripe(i)).collect();
        idx.sort_unstable();
        idx.dedup();
        Held {
            _guards: idx.into_iter().map(|i| self.stripes[i].lock()).collect(),
        }
    }
}

fn stripe(ino: Ino) -> usize {
    // Fibonacci hashing spreads consecutive inode numbers over the stripes.
    (ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % STRIPES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locking_the_same_inode_twice_in_one_call_does_not_deadlock() {
        let locks = Locks::new();
        let _held = locks.lock(&[5, 5, 9, 5]);
    }
}
