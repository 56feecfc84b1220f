//! Work no operation waits for, done by the mount that leads (one at a time on a shared
//! store): purging files unlinked while open by mounts that have since died, and deleting
//! data objects nothing references. Every mount purges such orphans when it opens the store;
//! on a shared store that is being used, a crashed mount's orphans would otherwise wait for
//! the next mount to start, and the objects of writes that never committed for the next
//! `fsck --repair`.
//!
//! An orphan is purged once its mount's session is gone: on etcd, once the session lease
//! expired. A mount cut off from etcd for longer than that comes back without its files
//! unlinked while open (their reads then fail): the price of not keeping them forever.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Core;
use crate::error::{Error, Result};

/// How often the leader looks for dead mounts' orphans.
const PURGE_EVERY: Duration = Duration::from_secs(15);
/// How often it collects unreferenced data objects.
const COLLECT_EVERY: Duration = Duration::from_secs(600);
/// Objects younger than this are kept: an operation in flight may be about to reference them.
pub const GARBAGE_GRACE: Duration = Duration::from_secs(3600);

/// The housekeeping thread of a mount; stopped by `stop`.
pub struct Housekeeper {
    stopped: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Housekeeper {
    pub fn start(core: Arc<Core>) -> Result<Housekeeper> {
        let stopped = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stopped.clone();
        let thread = std::thread::Builder::new()
            .name("lunafs-housekeeping".into())
            .spawn(move || run(&core, &flag))
            .map_err(|e| Error::io("starting the housekeeping thread", e))?;
        Ok(Housekeeper {
            stopped,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        let (lock, wake) = &*self.stopped;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(core: &Core, stopped: &(Mutex<bool>, Condvar)) {
    let mut collect_due = Instant::now() + COLLECT_EVERY;
    loop {
        let (lock, wake) = stopped;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, PURGE_EVERY, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        if *guard {
            return;
        }
        drop(guard);
        if !core.store.leads() {
            continue;
        }
        if let Err(e) = core.purge_dead_orphans() {
            tracing::warn!(error = %e, "purging dead mounts' orphans failed; trying again later");
        }
        if Instant::now() >= collect_due {
            collect_due = Instant::now() + COLLECT_EVERY;
            match core.store.collect_garbage(GARBAGE_GRACE) {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "removed unreferenced data objects"),
                Err(e) => tracing::warn!(error = %e, "collecting unreferenced data failed"),
            }
        }
    }
}
