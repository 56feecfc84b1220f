//! `notify`: the dispatcher that delivers queued events (SPEC section 4). One thread of its
//! own, so no FUSE request ever waits for it, runs the bucket's Lua notification script (or
//! the built-in default) for each queued entry and publishes the messages over NATS
//! connections held on a small tokio runtime, one per server and credentials, reconnecting
//! on their own.
//!
//! A round reads the queue in order, in pages, from the first entry still waiting (or a lower
//! one a FUSE thread committed since: commits can land out of sequence order), not from the
//! queue's start, so it does not step over the tombstones of delivered entries. An entry is deleted from the queue only once
//! its messages are published (core NATS: after a flush; JetStream: after every PubAck).
//! A failed entry (script error, server down, no PubAck) waits `backoff(attempt)` and is
//! tried again; later entries of the same object wait behind it, so each object's events
//! arrive in order. `max_retries` and `time_to_live` of the topic drop an entry: counted and
//! logged with its eventId. A kill at any point repeats at most the publishes of one round
//! after restart; JetStream deduplicates those by `Nats-Msg-Id` = eventId.
//!
//! The background script runs every `background_interval` on the same thread and VM.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use async_nats::{Client, HeaderMap};
use parking_lot::{Condvar, Mutex};
use serde_json::json;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::events::{self, Queued, Topic};
use crate::lua::{Notifier, NotifyRun, TableValue};

/// Queue entries read per page, and most handled per round.
const PAGE: usize = 512;
const ROUND: usize = 8192;
/// How long a flush or a PubAck may take before the entries count as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest sleep when nothing wakes the dispatcher.
const IDLE: Duration = Duration::from_secs(1);
/// The longest time between two full rounds (which drop entries past their time_to_live
/// and catch a reconnect whose event came before the connection was marked down).
const FULL_ROUND_EVERY: Duration = Duration::from_secs(5);

/// Delivery counters since the mount (shown in `/.lunafs/stats`).
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub script_errors: AtomicU64,
    pub background_runs: AtomicU64,
}

impl Counters {
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "published": get(&self.published),
            "delivered": get(&self.delivered),
            "retried": get(&self.retried),
            "dropped": get(&self.dropped),
            "script_errors": get(&self.script_errors),
            "background_runs": get(&self.background_runs),
        })
    }
}

#[derive(Default)]
struct Signal {
    woken: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
    /// A connection (re)connected: entries waiting for a server may go now.
    connected: AtomicBool,
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
    /// Starts delivering the queue of `core`'s store.
    pub fn start(core: Arc<Core>, background_interval: Duration) -> Result<Dispatcher> {
        let signal = Arc::new(Signal::default());
        let counters = Arc::new(Counters::default());
        let wake = signal.clone();
        core.events().set_waker(Arc::new(move || wake.wake()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lunafs-nats")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the NATS runtime", e))?;
        let mut worker = Worker {
            signal: signal.clone(),
            down: HashSet::new(),
            last_full: Instant::now(),
            core,
            rt,
            conns: HashMap::new(),
            retries: HashMap::new(),
            counters: counters.clone(),
            background_interval,
            background_due: Instant::now() + background_interval,
            floor: 0,
            high: 0,
            rescan: false,
        };
        let s = signal.clone();
        let thread = std::thread::Builder::new()
            .name("lunafs-notify".into())
            .spawn(move || worker.run(&s))
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

struct Retry {
    attempts: u32,
    due: Instant,
    /// The entry's object: its later entries wait behind this one.
    ino: u64,
}

/// A message a script asked for.
struct Msg {
    topic: String,
    subject: String,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

struct Worker {
    signal: Arc<Signal>,
    /// Connections (by `Topic::connection_key`) found not connected: their entries wait,
    /// without using up retries, until a reconnect (or the next full round).
    down: HashSet<String>,
    last_full: Instant,
    core: Arc<Core>,
    rt: tokio::runtime::Runtime,
    conns: HashMap<String, Client>,
    retries: HashMap<u64, Retry>,
    counters: Arc<Counters>,
    background_interval: Duration,
    background_due: Instant,
    /// Every entry below was delivered or dropped, unless a commit since says otherwise
    /// (`Events::take_committed_low`): where a full round starts.
    floor: u64,
    /// Every entry below was read by a round (delivered, dropped, or waiting for its retry or
    /// behind one): while no retry is due, a round starts here.
    high: u64,
    /// The last round sent entries, so later entries of their objects waited: the next
    /// round reads from `floor`.
    rescan: bool,
}

/// An entry whose messages were sent, waiting for its flush or acks.
struct Sent {
    seq: u64,
    ino: u64,
    event_id: String,
    /// None for the background script's messages (never retried).
    topic: Option<Topic>,
    messages: u64,
    acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
    /// Connections (by `Topic::connection_key`) with core NATS messages to flush.
    conns: Vec<String>,
}

/// How a sent entry ended.
struct Settled {
    seq: u64,
    ino: u64,
    event_id: String,
    topic: Option<Topic>,
    result: std::result::Result<(), String>,
}

impl Worker {
    fn run(&mut self, signal: &Signal) {
        // Client and JetStream handles are made and dropped on this thread: inside the
        // runtime's context.
        let handle = self.rt.handle().clone();
        let _entered = handle.enter();
        tracing::debug!("dispatcher started");
        while !signal.stop.load(Ordering::Relaxed) {
            // A bug met by one round (one topic's odd state) must not end delivery for
            // every topic: the round is logged and the next one starts from the queue.
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.round()));
            let busy = match round {
                Ok(Ok(n)) => n > 0,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "dispatcher round failed");
                    false
                }
                Err(_) => {
                    tracing::error!("dispatcher round panicked; continuing with the next round");
                    false
                }
            };
            if Instant::now() >= self.background_due {
                self.background();
                self.background_due = Instant::now() + self.background_interval;
            }
            if !busy {
                let next_retry = self.retries.values().map(|r| r.due).min();
                let until = [Some(self.background_due), next_retry]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(IDLE, |t| t.saturating_duration_since(Instant::now()))
                    .min(IDLE);
                signal.wait(until);
            }
        }
        tracing::debug!("dispatcher stopped");
    }

    /// Delivers what is due; returns how many entries left the queue.
    fn round(&mut self) -> Result<usize> {
        let core = self.core.clone();
        let store = core.store();
        // A full round reads from the first waiting entry; while no retry is due, only the
        // entries no round has read yet matter (a backlog waiting for a server that is down
        // is not read again on every commit), with the objects of waiting entries blocked.
        let now = Instant::now();
        let reconnected = self.signal.connected.swap(false, Ordering::AcqRel);
        let due = reconnected || now >= self.last_full + FULL_ROUND_EVERY;
        if due {
            self.down.clear();
        }
        let full =
            due || std::mem::take(&mut self.rescan) || self.retries.values().any(|r| r.due <= now);
        if full {
            self.last_full = now;
        }
        let mut blocked: HashSet<u64> = match full {
            true => HashSet::new(),
            false => self.retries.values().map(|r| r.ino).collect(),
        };
        // Lowered first, so they stay right if the round fails half-way.
        let low = core.events().take_committed_low();
        self.floor = self.floor.min(low);
        self.high = self.high.min(low);
        let start = if full { self.floor } else { self.high };
        let (mut from, mut seen, mut done) = (start, 0, 0);
        let mut waiting: Option<u64> = None;
        while seen < ROUND {
            let page = store.events(from, PAGE)?;
            let Some(&(last, _)) = page.last() else { break };
            from = last + 1;
            seen += page.len();
            let seqs: Vec<u64> = page.iter().map(|(seq, _)| *seq).collect();
            let mut sent = Vec::new();
            let mut finished = Vec::new();
            for (seq, bytes) in page {
                match self.send(seq, &bytes, &mut blocked) {
                    Step::Wait => {}
                    Step::Sent(s) => {
                        // One unsettled entry per object: a later one could be acked while
                        // this one fails, and arrive first. It waits for the next round.
                        blocked.insert(s.ino);
                        self.rescan = true;
                        sent.push(*s)
                    }
                    Step::Drop(why) => {
                        tracing::warn!(seq, reason = %why, "event dropped");
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        finished.push(seq);
                    }
                }
            }
            for s in self.settle(sent) {
                match (s.result, s.topic) {
                    (Ok(()), _) => finished.push(s.seq),
                    (Err(why), topic) => {
                        blocked.insert(s.ino);
                        let drop = topic
                            .is_some_and(|t| self.failed((s.seq, s.ino), &t, &s.event_id, &why));
                        if drop {
                            finished.push(s.seq);
                        }
                    }
                }
            }
            if waiting.is_none() {
                let gone: HashSet<u64> = finished.iter().copied().collect();
                waiting = seqs.into_iter().find(|seq| !gone.contains(seq));
            }
            if !finished.is_empty() {
                let mut batch = store.batch();
                for seq in &finished {
                    batch.delete_event(*seq);
                    self.retries.remove(seq);
                }
                batch.commit()?;
                done += finished.len();
            }
        }
        match (full, waiting) {
            (true, w) => self.floor = w.unwrap_or(from),
            (false, Some(w)) => self.floor = self.floor.min(w),
            (false, None) => {}
        }
        self.high = from;
        Ok(done)
    }

    /// Runs the script of one entry and sends its messages.
    fn send(&mut self, seq: u64, bytes: &[u8], blocked: &mut HashSet<u64>) -> Step {
        if let Some(r) = self.retries.get(&seq).filter(|r| r.due > Instant::now()) {
            blocked.insert(r.ino);
            return Step::Wait;
        }
        let q = match Queued::decode(bytes) {
            Ok(q) => q,
            Err(e) => return Step::Drop(e.to_string()),
        };
        if blocked.contains(&q.ino) {
            return Step::Wait;
        }
        let settings = self.core.events().settings();
        let Some(topic) = settings.topics.get(&q.topic).cloned() else {
            return Step::Drop(format!("{}: topic {} was removed", q.event_id(), q.topic));
        };
        if let Some(ttl) = topic.time_to_live {
            let age = events::millis(SystemTime::now()).saturating_sub(q.queued_ms);
            if age > ttl.as_millis() as u64 {
                return Step::Drop(format!(
                    "{}: older than time_to_live of topic {}",
                    q.event_id(),
                    topic.name
                ));
            }
        }
        // The event's server not connected: the entry waits for it without using up a retry,
        // and without running the script (whose side effects, like RGW counters, would
        // repeat on every round until the server is back).
        if self.down.contains(&topic.connection_key()) || !self.connected(&topic) {
            blocked.insert(q.ino);
            return Step::Wait;
        }
        let mut fail = |this: &mut Self, why: String| {
            blocked.insert(q.ino);
            if this.failed((seq, q.ino), &topic, q.event_id(), &why) {
                Step::Drop(why)
            } else {
                Step::Wait
            }
        };
        let messages = match settings.scripts.get(&q.bucket) {
            None => vec![Msg {
                topic: topic.name.clone(),
                subject: topic.subject.clone(),
                payload: q.json().into_bytes(),
                headers: Vec::new(),
            }],
            Some(script) => {
                let body = q.json();
                let topic_table = json!({
                    "name": topic.name, "subject": topic.subject,
                    "jetstream": topic.jetstream, "opaque_data": topic.opaque_data,
                });
                let run = NotifyRun {
                    script,
                    event: Some(&q.record),
                    event_json: Some(&body),
                    topic: Some(&topic_table),
                };
                let mut ctx = ScriptCtx {
                    core: &self.core,
                    default_topic: Some(&topic.name),
                    messages: Vec::new(),
                };
                if let Err(e) = self.core.run_notify_script(&run, &mut ctx) {
                    self.counters.script_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(script = %script.name, event = q.event_id(), error = %e,
                        "notification script failed");
                    return fail(self, format!("script {}: {e}", script.name));
                }
                ctx.messages
            }
        };
        // The script routed to another topic whose server is not connected: publish fails
        // and the entry is retried.
        match self.publish(&messages, Some(q.event_id()), &settings.topics) {
            Ok((acks, conns)) => Step::Sent(Box::new(Sent {
                seq,
                ino: q.ino,
                event_id: q.event_id().to_string(),
                topic: Some(topic),
                messages: messages.len() as u64,
                acks,
                conns,
            })),
            Err(why) => fail(self, why),
        }
    }

    /// Sends messages: core NATS ones into the connection's buffer, JetStream ones with an
    /// ack to wait for.
    #[allow(clippy::type_complexity)]
    fn publish(
        &mut self,
        messages: &[Msg],
        event_id: Option<&str>,
        topics: &std::collections::BTreeMap<String, Topic>,
    ) -> std::result::Result<
        (
            Vec<async_nats::jetstream::context::PublishAckFuture>,
            Vec<String>,
        ),
        String,
    > {
        let mut acks = Vec::new();
        let mut conns = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let topic = topics
                .get(&m.topic)
                .ok_or_else(|| format!("no topic {}", m.topic))?;
            let client = self.connection(topic)?;
            if client.connection_state() != async_nats::connection::State::Connected {
                return Err(format!("not connected to {}", topic.url));
            }
            let mut headers = HeaderMap::new();
            for (k, v) in &m.headers {
                headers.insert(k.as_str(), v.as_str());
            }
            // Events deduplicate by their id; the background script's messages have none
            // (a fixed id would make the stream drop every later run's messages).
            if let Some(event_id) = event_id.filter(|_| topic.jetstream) {
                if headers.get("Nats-Msg-Id").is_none() {
                    let id = match i {
                        0 => event_id.to_string(),
                        i => format!("{event_id}.{i}"),
                    };
                    headers.insert("Nats-Msg-Id", id.as_str());
                }
            }
            let subject = m.subject.clone();
            let payload = m.payload.clone().into();
            if topic.jetstream {
                let js = async_nats::jetstream::new(client.clone());
                let ack = self
                    .rt
                    .block_on(js.publish_with_headers(subject, headers, payload))
                    .map_err(|e| format!("JetStream publish to {}: {e}", m.subject))?;
                acks.push(ack);
            } else {
                self.rt
                    .block_on(client.publish_with_headers(subject, headers, payload))
                    .map_err(|e| format!("publish to {}: {e}", m.subject))?;
                let key = topic.connection_key();
                if !conns.contains(&key) {
                    conns.push(key);
                }
            }
        }
        Ok((acks, conns))
    }

    /// Waits for the flushes and acks of sent entries.
    fn settle(&mut self, sent: Vec<Sent>) -> Vec<Settled> {
        // One flush per connection covers every message buffered on it before.
        let mut flushed: HashMap<String, std::result::Result<(), String>> = HashMap::new();
        let mut out = Vec::new();
        for s in sent {
            let mut result = Ok(());
            for key in &s.conns {
                let r = flushed.entry(key.clone()).or_insert_with(|| {
                    let Some(c) = self.conns.get(key).cloned() else {
                        return Err("the connection went away before its flush".to_string());
                    };
                    self.rt
                        .block_on(async { tokio::time::timeout(PUBLISH_TIMEOUT, c.flush()).await })
                        .map_err(|_| "flush timed out".to_string())
                        .and_then(|r| r.map_err(|e| format!("flush: {e}")))
                });
                if let Err(e) = r {
                    result = Err(e.clone());
                }
            }
            for ack in s.acks {
                let r = self
                    .rt
                    .block_on(async { tokio::time::timeout(PUBLISH_TIMEOUT, ack).await });
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => result = Err(format!("no PubAck: {e}")),
                    Err(_) => result = Err("PubAck timed out".into()),
                }
            }
            if result.is_ok() {
                self.counters
                    .published
                    .fetch_add(s.messages, Ordering::Relaxed);
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
            }
            out.push(Settled {
                seq: s.seq,
                ino: s.ino,
                event_id: s.event_id,
                topic: s.topic,
                result,
            });
        }
        out
    }

    /// Records a failed attempt; returns true if the entry is to be dropped.
    fn failed(&mut self, (seq, ino): (u64, u64), topic: &Topic, event_id: &str, why: &str) -> bool {
        let r = self.retries.entry(seq).or_insert(Retry {
            attempts: 0,
            due: Instant::now(),
            ino,
        });
        r.attempts += 1;
        if topic.max_retries > 0 && r.attempts > topic.max_retries {
            tracing::warn!(event = event_id, topic = %topic.name, attempts = r.attempts,
                error = why, "event dropped after max_retries");
            return true;
        }
        r.due = Instant::now() + topic.backoff(r.attempts);
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(event = event_id, topic = %topic.name, attempt = r.attempts,
            error = why, "delivery failed; will retry");
        false
    }

    /// Whether the topic's connection is up; if not, it is marked down (`Worker::down`).
    fn connected(&mut self, topic: &Topic) -> bool {
        let up = self
            .connection(topic)
            .is_ok_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        if !up {
            self.down.insert(topic.connection_key());
        }
        up
    }

    /// The held connection for a topic's server and credentials, made on first use. It
    /// connects and reconnects in the background, forever. Err only for an address that
    /// cannot be used at all (topics are checked when written, so only a damaged one).
    fn connection(&mut self, topic: &Topic) -> std::result::Result<Client, String> {
        let key = topic.connection_key();
        if let Some(c) = self.conns.get(&key) {
            return Ok(c.clone());
        }
        let signal = self.signal.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .name("lunafs")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    signal.connected.store(true, Ordering::Release);
                    signal.wake();
                }
                std::future::ready(())
            });
        if let (Some(u), Some(p)) = (&topic.user, &topic.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &topic.token {
            opts = opts.token(t.clone());
        }
        let url = topic.url.clone();
        let client = self
            .rt
            .block_on(async move { opts.connect(url).await })
            .map_err(|e| format!("topic {}: cannot use {}: {e}", topic.name, topic.url))?;
        // Give a server that is up a moment to answer, so the first round can publish.
        let probe = client.clone();
        self.rt.block_on(async move {
            for _ in 0..50 {
                if probe.connection_state() == async_nats::connection::State::Connected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        self.conns.insert(key, client.clone());
        Ok(client)
    }

    /// One run of the background script, if there is one; its messages go out at once.
    fn background(&mut self) {
        let settings = self.core.events().settings();
        let Some(script) = settings.background.clone() else {
            return;
        };
        let run = NotifyRun {
            script: &script,
            event: None,
            event_json: None,
            topic: None,
        };
        let mut ctx = ScriptCtx {
            core: &self.core,
            default_topic: None,
            messages: Vec::new(),
        };
        self.counters
            .background_runs
            .fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.core.run_notify_script(&run, &mut ctx) {
            self.counters.script_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "background script failed");
            return;
        }
        let messages = ctx.messages;
        let sent = self.publish(&messages, None, &settings.topics);
        let result = sent.map(|(acks, conns)| {
            self.settle(vec![Sent {
                seq: 0,
                ino: 0,
                event_id: "background".into(),
                topic: None,
                messages: messages.len() as u64,
                acks,
                conns,
            }])
        });
        match result {
            Ok(r) if r.iter().all(|r| r.result.is_ok()) => {}
            _ => tracing::warn!("background script messages were not all published"),
        }
    }
}

enum Step {
    /// Not now (blocked behind an earlier event of its object, or backing off).
    Wait,
    Sent(Box<Sent>),
    Drop(String),
}

/// What a running script can reach: the global table (through core) and its outbox.
struct ScriptCtx<'a> {
    core: &'a Core,
    default_topic: Option<&'a str>,
    messages: Vec<Msg>,
}

impl Notifier for ScriptCtx<'_> {
    fn publish(
        &mut self,
        subject: &str,
        payload: &[u8],
        headers: Vec<(String, String)>,
        topic: Option<&str>,
    ) -> Result<()> {
        let topic = topic.or(self.default_topic).ok_or_else(|| {
            Error::InvalidArgument(
                "nats.publish: name a topic (4th argument) in the background script".into(),
            )
        })?;
        if !self.core.events().settings().topics.contains_key(topic) {
            return Err(Error::NotFound(format!("nats.publish: topic {topic}")));
        }
        if subject.is_empty() || subject.contains(char::is_whitespace) {
            return Err(Error::InvalidArgument(format!(
                "nats.publish: subject {subject:?}"
            )));
        }
        self.messages.push(Msg {
            topic: topic.to_string(),
            subject: subject.to_string(),
            payload: payload.to_vec(),
            headers,
        });
        Ok(())
    }

    fn table_get(&mut self, key: &str) -> Result<Option<TableValue>> {
        self.core.global_get(key)
    }

    fn table_set(&mut self, key: &str, value: Option<TableValue>) -> Result<()> {
        self.core.global_set(key, value)
    }

    fn table_add(&mut self, key: &str, delta: f64) -> Result<TableValue> {
        self.core.global_add(key, delta)
    }
}
