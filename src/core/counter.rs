//! The reserve-ahead counter behind inode numbers and event sequence numbers: numbers come
//! from memory, and a reservation of the next `block` is committed to the store (one small
//! write) before any number past the last reservation is handed out. After a restart the
//! counter starts at the reservation, so a number is never handed out twice, even if what it
//! named was deleted meanwhile. Mounts sharing a store each reserve their own blocks: a
//! reservation checks the record's version, so two mounts never take the same block.

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::Store;

pub struct Counter {
    what: &'static str,
    /// The `meta` record holding the reservation.
    key: &'static [u8],
    /// (next to hand out, numbers below this are reserved for this counter).
    state: Mutex<(u64, u64)>,
    block: u64,
    /// Numbers at or above this are never handed out.
    limit: u64,
}

impl Counter {
    /// A counter that hands out `start` next, its reservation kept under `key`.
    pub fn new(
        what: &'static str,
        key: &'static [u8],
        start: u64,
        block: u64,
        limit: u64,
    ) -> Counter {
        Counter {
            what,
            key,
            state: Mutex::new((start, start)),
            block,
            limit,
        }
    }

    /// A never-used number; its reservation is committed before it is returned.
    pub fn next(&self, store: &Store) -> Result<u64> {
        let mut state = self.state.lock();
        if state.0 >= state.1 {
            *state = self.reserve(store, state.0)?;
        }
        let n = state.0;
        state.0 += 1;
        Ok(n)
    }

    /// Reserves a block at or above `from` and above every other reservation; returns its
    /// (start, end).
    fn reserve(&self, store: &Store, from: u64) -> Result<(u64, u64)> {
        loop {
            let (high, version) = store.reserved(self.key)?;
            let start = high.max(from);
            let below = start + self.block;
            if below >= self.limit {
                return Err(Error::Corrupt(format!("{} exhausted", self.what)));
            }
            // Apart from the operation that needs the number: it checks only the record.
            let mut batch = store.batch_apart();
            batch.check_counter(self.key, version);
            batch.put_reserved(self.key, below);
            match batch.commit() {
                Ok(()) => return Ok((start, below)),
                Err(Error::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next number that would be handed out.
    pub fn peek(&self) -> u64 {
        self.state.lock().0
    }
}
