//! The handler-call pool: calls run on threads of their own, never on the FUSE workers.
//!
//! A FUSE worker that receives a call (a `user.cls.*` setxattr, or the read that runs a
//! `/.lunafs/call` request) hands the request and its reply to this pool and goes back to
//! serving lookups, reads and writes; a pool thread runs the call and answers the kernel
//! itself. So however long calls take (up to their time limit), and however many arrive,
//! the rest of the mount keeps answering. The pool has `threads` workers (each with its own
//! Lua VM) and a bounded queue: a call that finds the queue full is refused with EAGAIN
//! rather than held in memory without bound.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// Calls waiting for a thread before new ones are refused.
const QUEUE: usize = 1024;

/// A call handed to the pool, with the reply it owes the kernel.
pub trait Job: Send {
    /// Runs the call and replies.
    fn run(self: Box<Self>);
    /// Replies that the call could not be queued.
    fn refuse(self: Box<Self>, errno: i32);
}

/// The queue the pool's threads take calls from. One condition variable: a queued call
/// wakes one idle thread, and nothing else wakes (a channel behind a lock woke two: the
/// receiver, then the next thread to wait on the lock).
#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Box<dyn Job>>,
    closed: bool,
}

pub struct CallPool {
    queue: Arc<Queue>,
}

impl CallPool {
    pub fn new(threads: usize) -> std::io::Result<CallPool> {
        let queue = Arc::new(Queue::default());
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("call-{i}"))
                .spawn(move || work(&queue))?;
        }
        Ok(CallPool { queue })
    }

    /// Queues `job`; a full queue refuses it at once with EAGAIN.
    pub fn submit(&self, job: Box<dyn Job>) {
        let mut state = self.queue.state.lock();
        if state.closed {
            drop(state);
            return job.refuse(libc::ESHUTDOWN);
        }
        if state.jobs.len() >= QUEUE {
            drop(state);
            tracing::warn!(queued = QUEUE, "handler-call queue full; refusing a call");
            return job.refuse(libc::EAGAIN);
        }
        state.jobs.push_back(job);
        drop(state);
        self.queue.ready.notify_one();
    }
}

impl Drop for CallPool {
    /// The threads finish the calls queued, then end.
    fn drop(&mut self) {
        self.queue.state.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

fn work(queue: &Queue) {
    while let Some(job) = next(queue) {
        // A bug in one call must not take a thread from every later one; the job's
        // reply is answered by its drop (fuser answers EIO for a dropped reply).
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run()));
        if run.is_err() {
            tracing::error!("a handler call panicked; its caller gets EIO");
        }
    }
}

/// The next queued call, waiting for one; None once the pool is closed and drained.
fn next(queue: &Queue) -> Option<Box<dyn Job>> {
    let mut state = queue.state.lock();
    loop {
        if let Some(job) = state.jobs.pop_front() {
            return Some(job);
        }
        if state.closed {
            return None;
        }
        queue.ready.wait(&mut state);
    }
}
