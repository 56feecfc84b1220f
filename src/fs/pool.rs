//! The handler-call pool: calls run on threads of their own, never on the FUSE workers.
//!
//! A FUSE worker that receives a call (a `user.cls.*` setxattr, or the read that runs a
//! `/.lunafs/call` request) hands the request and its reply to this pool and goes back to
//! serving lookups, reads and writes; a pool thread runs the call and answers the kernel
//! itself. So however long calls take (up to their time limit), and however many arrive,
//! the rest of the mount keeps answering. The pool has `threads` workers (each with its own
//! Lua VM) and a bounded queue: a call that finds the queue full is refused with EAGAIN
//! rather than held in memory without bound.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use parking_lot::Mutex;

/// Calls waiting for a thread before new ones are refused.
const QUEUE: usize = 1024;

/// A call handed to the pool, with the reply it owes the kernel.
pub trait Job: Send {
    /// Runs the call and replies.
    fn run(self: Box<Self>);
    /// Replies that the call could not be queued.
    fn refuse(self: Box<Self>, errno: i32);
}

pub struct CallPool {
    queue: SyncSender<Box<dyn Job>>,
}

impl CallPool {
    pub fn new(threads: usize) -> std::io::Result<CallPool> {
        let (queue, jobs) = sync_channel::<Box<dyn Job>>(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("call-{i}"))
                .spawn(move || work(&jobs))?;
        }
        Ok(CallPool { queue })
    }

    /// Queues `job`; a full queue refuses it at once with EAGAIN.
    pub fn submit(&self, job: Box<dyn Job>) {
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                tracing::warn!(queued = QUEUE, "handler-call queue full; refusing a call");
                job.refuse(libc::EAGAIN)
            }
            Err(TrySendError::Disconnected(job)) => job.refuse(libc::ESHUTDOWN),
        }
    }
}

fn work(jobs: &Mutex<Receiver<Box<dyn Job>>>) {
    loop {
        // One thread waits on the queue at a time; the others wait for the lock.
        let job = jobs.lock().recv();
        match job {
            // A bug in one call must not take a thread from every later one; the job's
            // reply is answered by its drop (fuser answers EIO for a dropped reply).
            Ok(job) => {
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()));
                if run.is_err() {
                    tracing::error!("a handler call panicked; its caller gets EIO");
                }
            }
            Err(_) => return,
        }
    }
}
