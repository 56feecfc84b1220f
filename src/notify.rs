//! `notify`: delivery of bucket notifications (SPEC section 4). core queues events in the
//! batch of the change that causes them and exposes them through a narrow API (pending
//! events from a sequence number, acknowledgements); this module owns everything after
//! that, and never touches the store:
//!
//! - `config`: topics and notifications as written (TOML), parsed and validated (URLs into
//!   server addresses, filters, triggers);
//! - `routes`: the settings in force and the routing core asks for (`Subscriptions`);
//! - `record`: the S3 record an event is published as;
//! - `dispatcher`: the rounds that deliver pending events in order per object, with
//!   retries, backoff, drops and acknowledgements;
//! - `nats`: connections held across rounds, publishing, flushes and PubAcks;
//! - `script`: running notification and background scripts;
//! - `trigger`: running object-class methods on the event's object.
//!
//! The dispatcher is one thread of its own, so no FUSE request ever waits for it.

pub mod config;
mod dispatcher;
mod nats;
pub mod record;
mod routes;
mod script;
mod trigger;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde_json::json;

use crate::core::call::AfterCall;
use crate::core::Core;
use crate::error::{Error, Result};

pub use nats::{check_stream, StreamCheck};
pub use routes::Routes;

/// Longest sleep when nothing wakes the dispatcher.
const IDLE: Duration = Duration::from_secs(1);

/// Installs the notification settings' routing into `core` (it loads the stored settings).
pub fn install(core: &Core) -> Result<Arc<Routes>> {
    let routes = Arc::new(Routes::default());
    core.set_subscriptions(routes.clone())?;
    Ok(routes)
}

/// How one topic (or trigger) is doing, as `/.lunafs/stats` and the metrics show it.
#[derive(Debug, Clone, Default)]
pub struct TopicState {
    /// None until its connection was first looked at.
    pub connected: Option<bool>,
    /// Events delivered to it, and the messages they took.
    pub delivered: u64,
    pub published: u64,
    /// Failed attempts; of the events they failed, how many wait for a retry and how many
    /// were given up (max_retries).
    pub failures: u64,
    pub retried: u64,
    pub dropped: u64,
    pub last_error: Option<String>,
    pub last_error_ms: u64,
}

impl TopicState {
    /// "connected", "disconnected", "unused" (not tried yet) or "trigger" (a `call:` target).
    pub fn state(&self, name: &str) -> &'static str {
        match self.connected {
            _ if name.starts_with("call:") => "trigger",
            Some(true) => "connected",
            Some(false) => "disconnected",
            None => "unused",
        }
    }
}

/// Delivery counters since the mount, and each topic's state.
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub script_errors: AtomicU64,
    pub background_runs: AtomicU64,
    pub triggers_run: AtomicU64,
    pub triggers_failed: AtomicU64,
    pub triggers_skipped: AtomicU64,
    topics: Mutex<BTreeMap<String, TopicState>>,
}

impl Counters {
    fn topic_connected(&self, name: &str, up: bool) {
        self.topics.lock().entry(name.into()).or_default().connected = Some(up);
    }

    fn topic_delivered(&self, name: &str, messages: u64) {
        let mut topics = self.topics.lock();
        let t = topics.entry(name.into()).or_default();
        t.delivered += 1;
        t.published += messages;
        t.connected = Some(true);
    }

    fn topic_failed(&self, name: &str, why: &str) {
        let mut topics = self.topics.lock();
        let t = topics.entry(name.into()).or_default();
        t.failures += 1;
        t.last_error = Some(why.to_string());
        t.last_error_ms = record::millis(std::time::SystemTime::now());
    }

    /// An event that failed for `name` waits for a retry, or (`dropped`) was given up.
    fn topic_event_failed(&self, name: &str, dropped: bool) {
        let mut topics = self.topics.lock();
        let t = topics.entry(name.into()).or_default();
        match dropped {
            true => t.dropped += 1,
            false => t.retried += 1,
        }
    }

    /// Every topic's state, by name.
    pub fn topics(&self) -> Vec<(String, TopicState)> {
        let topics = self.topics.lock();
        topics.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Acquire: what the dispatcher did before counting (removing the event from the
        // queue) is seen by whoever reads these first (`/.lunafs/stats`).
        let get = |c: &AtomicU64| c.load(Ordering::Acquire);
        let topics: serde_json::Map<String, serde_json::Value> = self
            .topics
            .lock()
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    json!({
                        "state": t.state(name),
                        "delivered": t.delivered,
                        "published": t.published,
                        "failures": t.failures,
                        "retried": t.retried,
                        "dropped": t.dropped,
                        "last_error": t.last_error,
                        "last_error_time": t.last_error.as_ref().map(|_| record::iso8601(t.last_error_ms)),
                    }),
                )
            })
            .collect();
        json!({
            "published": get(&self.published),
            "delivered": get(&self.delivered),
            "retried": get(&self.retried),
            "dropped": get(&self.dropped),
            "script_errors": get(&self.script_errors),
            "background_runs": get(&self.background_runs),
            "triggers_run": get(&self.triggers_run),
            "triggers_failed": get(&self.triggers_failed),
            "triggers_skipped": get(&self.triggers_skipped),
            "topics": topics,
        })
    }
}

/// Wakes the dispatcher: after commits that queued events, a reconnect, or a stop.
#[derive(Default)]
struct Signal {
    woken: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Signal {
    fn wake(&self) {
        *self.woken.lock() = true;
        self.cv.notify_one();
    }

    fn wait(&self, timeout: Duration) {
        let mut woken = self.woken.lock();
        if !*woken {
            self.cv.wait_for(&mut woken, timeout);
        }
        *woken = false;
    }
}

pub struct Dispatcher {
    thread: Option<JoinHandle<()>>,
    signal: Arc<Signal>,
    pub counters: Arc<Counters>,
}

impl Dispatcher {
    /// Starts delivering `core`'s pending events by `routes`; `after` learns what triggers
    /// changed (for the kernel's caches).
    pub fn start(
        core: Arc<Core>,
        routes: Arc<Routes>,
        after: Arc<dyn AfterCall>,
        background_interval: Duration,
    ) -> Result<Dispatcher> {
        let signal = Arc::new(Signal::default());
        let counters = Arc::new(Counters::default());
        let wake = signal.clone();
        let waker: Arc<dyn Fn() + Send + Sync> = Arc::new(move || wake.wake());
        core.set_event_waker(waker.clone());
        let nats = nats::Nats::new(waker)?;
        let mut worker = dispatcher::Worker::new(
            core,
            routes,
            nats,
            after,
            signal.clone(),
            counters.clone(),
            background_interval,
        );
        let thread = std::thread::Builder::new()
            .name("lunafs-notify".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::io("starting the dispatcher", e))?;
        Ok(Dispatcher {
            thread: Some(thread),
            signal,
            counters,
        })
    }

    /// Stops after the current round; what is still queued is delivered after the next
    /// mount.
    pub fn stop(mut self) {
        self.signal.stop.store(true, Ordering::Relaxed);
        self.signal.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
