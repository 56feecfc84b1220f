//! The reserve-ahead counter behind inode numbers and event sequence numbers: numbers come
//! from memory, and a reservation of the next `block` is committed to the store (one small
//! write) before any number past the last reservation is handed out. After a restart the
//! counter starts at the reservation, so a number is never handed out twice, even if what it
//! named was deleted meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::{Batch, Store};

pub struct Counter {
    what: &'static str,
    next: AtomicU64,
    /// Numbers below this are reserved in the store.
    reserved: AtomicU64,
    reserving: Mutex<()>,
    block: u64,
    /// Numbers at or above this are never handed out.
    limit: u64,
    /// Writes a reservation into a batch.
    record: fn(&mut Batch<'_>, u64),
}

impl Counter {
    /// A counter that hands out `start` next; `record` stores a reservation.
    pub fn new(
        what: &'static str,
        start: u64,
        block: u64,
        limit: u64,
        record: fn(&mut Batch<'_>, u64),
    ) -> Counter {
        Counter {
            what,
            next: AtomicU64::new(start),
            reserved: AtomicU64::new(start),
            reserving: Mutex::new(()),
            block,
            limit,
            record,
        }
    }

    /// A never-used number; its reservation is committed before it is returned.
    pub fn next(&self, store: &Store) -> Result<u64> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n >= self.limit.saturating_sub(self.block) {
            return Err(Error::Corrupt(format!("{} exhausted", self.what)));
        }
        if n >= self.reserved.load(Ordering::Acquire) {
            let _one = self.reserving.lock();
            if n >= self.reserved.load(Ordering::Acquire) {
                let below = n + self.block;
                let mut batch = store.batch();
                (self.record)(&mut batch, below);
                batch.commit()?;
                self.reserved.store(below, Ordering::Release);
            }
        }
        Ok(n)
    }

    /// The next number that would be handed out.
    pub fn peek(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}
