//! The dispatcher's rounds: read pending events from core in order, deliver each (publish
//! through its bucket's script, or run its trigger), acknowledge what is done.
//!
//! Two kinds of round, each reading at most `ROUND` events. A round of **new events** reads
//! what no round read yet. A **sweep** reads the queue from the first event still waiting
//! (the floor; or a lower one committed since: commits land out of sequence order) to its
//! end, one round at a time, taking turns with rounds of new events: it retries what is
//! due, and delivers what waited behind others. It starts when a retry is due, after a
//! round sent events, after a reconnect, and at least every 5 s (to drop what outlived its
//! time_to_live). Starting at the floor, not the queue's start, it does not step over the
//! tombstones of delivered events; taking turns, a long backlog of failing events does not
//! keep new events of other buckets waiting.
//!
//! An event leaves the queue only once its messages are published (core NATS: after the
//! flush of its connection, one per page of events; JetStream: after every PubAck) or its
//! trigger ran. A failed event (script error, no PubAck, failed trigger) waits
//! `backoff(attempt)` and is tried again; later events of the same object wait behind it,
//! and behind a held one, so each object's events arrive in order. `max_retries` and
//! `time_to_live` drop an event: counted and logged. While a topic's server is not
//! connected its events wait without using up retries.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::config::{Retry as RetryPolicy, Target, Topic};
use super::nats::{Msg, Nats, Outgoing};
use super::routes::{Routes, Settings};
use super::trigger::{self, Ran};
use super::{record, script, Counters, Signal};
use crate::core::call::AfterCall;
use crate::core::events::PendingEvent;
use crate::core::Core;
use crate::error::Result;
use crate::store::codec::events::QueuedEvent;

/// Events read per page, and most handled per round. A round's first page is small and each
/// next one twice as large: a round cut short by slow scripts has read little it did not
/// handle (on a shared store every page is a round trip carrying its events).
const FIRST_PAGE: usize = 32;
const PAGE: usize = 512;
const ROUND: usize = 8192;
/// A round stops after this long (slow scripts), so the other kind gets its turn.
const ROUND_TIME: Duration = Duration::from_millis(50);
/// The longest time between two sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A topic's delivery failures are logged at warn at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

struct Retry {
    attempts: u32,
    due: Instant,
    /// The event's object: its later events wait behind this one.
    ino: u64,
}

/// Where a sweep goes on, and the first event it found still waiting (the next floor).
struct Sweep {
    at: u64,
    waiting: Option<u64>,
}

/// What one round read.
struct Read {
    /// One past the last event read.
    end: u64,
    /// The queue holds no event from `end` on.
    at_end: bool,
    /// Events that left the queue.
    done: usize,
    /// The first event read that is still waiting.
    waiting: Option<u64>,
}

/// An event whose messages were sent, waiting for its flush or acks.
struct Sent {
    seq: u64,
    ino: u64,
    topic: Topic,
    out: Outgoing,
}

/// What each connection's flush for one page gave, by `Topic::connection_key`.
type Flushed = HashMap<String, std::result::Result<(), String>>;

/// The events of one page that are finished, and how many of them were delivered and
/// dropped (the rest ran their trigger).
#[derive(Default)]
struct Finished {
    seqs: Vec<u64>,
    delivered: u64,
    dropped: u64,
}

enum Step {
    /// Not now (behind an earlier event of its object, held, or backing off).
    Wait,
    Sent(Box<Sent>),
    /// Done: delivered, or its trigger ran (or was skipped).
    Done,
    Drop(String),
}

pub(super) struct Worker {
    pub core: Arc<Core>,
    pub routes: Arc<Routes>,
    pub nats: Nats,
    pub after: Arc<dyn AfterCall>,
    pub signal: Arc<Signal>,
    pub counters: Arc<Counters>,
    pub background_interval: Duration,
    pub background_due: Instant,
    /// Connections (by `Topic::connection_key`) found not connected: their events wait,
    /// without using up retries, until a reconnect (or the next sweep).
    down: HashSet<String>,
    last_sweep: Instant,
    retries: HashMap<u64, Retry>,
    /// Every event below was delivered or dropped, unless a commit since says otherwise:
    /// where a sweep starts.
    floor: u64,
    /// Every event below was read by a round: rounds of new events start here.
    high: u64,
    /// An unfinished sweep: rounds that read the queue from the floor to its end, a `ROUND`
    /// at a time, to retry what is due and deliver what waited behind others.
    sweep: Option<Sweep>,
    /// The last round was one of new events (they take turns with a sweep's).
    new_turn: bool,
    /// The last round sent events, so later events of their objects waited.
    rescan: bool,
    /// When each topic's failures were last logged at warn, and how many since.
    warned: HashMap<String, (Instant, u64)>,
    /// This mount delivered in the last round (see `leading`).
    was_leader: bool,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: Arc<Core>,
        routes: Arc<Routes>,
        nats: Nats,
        after: Arc<dyn AfterCall>,
        signal: Arc<Signal>,
        counters: Arc<Counters>,
        background_interval: Duration,
    ) -> Worker {
        Worker {
            core,
            routes,
            nats,
            after,
            signal,
            counters,
            background_interval,
            background_due: Instant::now() + background_interval,
            down: HashSet::new(),
            last_sweep: Instant::now(),
            retries: HashMap::new(),
            floor: 0,
            high: 0,
            sweep: None,
            new_turn: false,
            rescan: false,
            warned: HashMap::new(),
            was_leader: false,
        }
    }

    pub fn run(&mut self) {
        // Client and JetStream handles are made and dropped inside the runtime's context.
        let handle = self.nats.handle();
        let _entered = handle.enter();
        tracing::debug!("dispatcher started");
        while !self.signal.stop.load(Ordering::Relaxed) {
            // A bug met by one round (one topic's odd state) must not end delivery for
            // every topic: the round is logged and the next one starts from the queue.
            if !self.leading() {
                self.signal.wait(super::IDLE);
                continue;
            }
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
                self.signal.wait(self.idle_time());
            }
        }
        tracing::debug!("dispatcher stopped");
    }

    /// Whether this mount delivers (on a shared store, the leader alone does). A mount that
    /// takes over sweeps the whole queue: the last leader may have left anything in it.
    fn leading(&mut self) -> bool {
        let leads = self.core.leads();
        if leads && !self.was_leader {
            tracing::info!("this mount now delivers events and runs the background script");
            self.floor = 0;
            self.rescan = true;
        } else if !leads && self.was_leader {
            tracing::warn!("this mount no longer leads; another mount delivers events");
        }
        self.was_leader = leads;
        leads
    }

    /// How long to sleep when nothing wakes the dispatcher.
    fn idle_time(&self) -> Duration {
        let next_retry = self.retries.values().map(|r| r.due).min();
        [Some(self.background_due), next_retry]
            .into_iter()
            .flatten()
            .min()
            .map_or(super::IDLE, |t| t.saturating_duration_since(Instant::now()))
            .min(super::IDLE)
    }

    /// Whether a sweep from the floor is due: a reconnect, retries due, events left
    /// waiting behind sent ones, or `SWEEP_EVERY`.
    fn sweep_due(&mut self, now: Instant) -> bool {
        let reconnected = self.nats.connected.swap(false, Ordering::AcqRel);
        let due = reconnected || now >= self.last_sweep + SWEEP_EVERY;
        if due {
            self.down.clear();
        }
        let sweep =
            due || std::mem::take(&mut self.rescan) || self.retries.values().any(|r| r.due <= now);
        if sweep {
            self.last_sweep = now;
        }
        sweep
    }

    /// Delivers what is due; returns how many events left the queue, or 1 while a sweep
    /// is unfinished (the dispatcher goes on without sleeping).
    fn round(&mut self) -> Result<usize> {
        // Lowered first, so they stay right if the round fails half-way.
        let low = self.core.take_committed_low();
        self.floor = self.floor.min(low);
        self.high = self.high.min(low);
        if let Some(s) = &mut self.sweep {
            s.at = s.at.min(low);
        }
        if self.sweep.is_none() && self.sweep_due(Instant::now()) {
            self.sweep = Some(Sweep {
                at: self.floor,
                waiting: None,
            });
        }
        // While a sweep is unfinished, its rounds take turns with rounds of new events, so
        // a long backlog does not keep new events of other objects waiting.
        self.new_turn = self.sweep.is_some() && !self.new_turn;
        let sweep_at = self.sweep.as_ref().filter(|_| !self.new_turn).map(|s| s.at);
        let read = self.read(sweep_at.unwrap_or(self.high))?;
        match (&mut self.sweep, sweep_at) {
            (Some(s), Some(_)) => {
                s.waiting = first(s.waiting, read.waiting);
                match read.at_end {
                    true => {
                        self.floor = s.waiting.unwrap_or(read.end);
                        self.sweep = None;
                    }
                    false => s.at = read.end,
                }
            }
            _ => {
                if let Some(w) = read.waiting {
                    self.floor = self.floor.min(w);
                }
            }
        }
        self.high = self.high.max(read.end);
        Ok(read.done + usize::from(self.sweep.is_some()))
    }

    /// Reads up to `ROUND` events from `from` on and handles them. Later events of objects
    /// that wait below `from` (backing off, held) keep waiting.
    fn read(&mut self, from: u64) -> Result<Read> {
        let mut blocked: HashSet<u64> = self
            .retries
            .iter()
            .filter(|(&seq, _)| seq < from)
            .map(|(_, r)| r.ino)
            .collect();
        blocked.extend(self.core.held_objects_below(from));
        let mut read = Read {
            end: from,
            at_end: false,
            done: 0,
            waiting: None,
        };
        let (mut seen, deadline) = (0, Instant::now() + ROUND_TIME);
        let mut want = FIRST_PAGE;
        while seen < ROUND {
            let page = self.core.pending_events(read.end, want)?;
            if page.is_empty() {
                read.at_end = true;
                break;
            }
            read.at_end = page.len() < want;
            want = (want * 2).min(PAGE);
            let (finished, handled) = self.page(&page, &mut blocked, deadline);
            let Some(last) = page[..handled].last().map(|p| p.seq) else {
                break;
            };
            read.end = last + 1;
            read.at_end &= handled == page.len();
            seen += handled;
            if read.waiting.is_none() {
                let gone: HashSet<u64> = finished.seqs.iter().copied().collect();
                read.waiting = page[..handled]
                    .iter()
                    .map(|p| p.seq)
                    .find(|seq| !gone.contains(seq));
            }
            self.core.ack_events(&finished.seqs)?;
            self.finished(&finished);
            read.done += finished.seqs.len();
            if read.at_end || handled < page.len() {
                break;
            }
        }
        Ok(read)
    }

    /// Handles events of `page` in order until `deadline` (at least one); returns the
    /// events that are finished (delivered, dropped or their trigger done) and how many
    /// were handled.
    fn page(
        &mut self,
        page: &[PendingEvent],
        blocked: &mut HashSet<u64>,
        deadline: Instant,
    ) -> (Finished, usize) {
        let (mut sent, mut done) = (Vec::new(), Finished::default());
        let mut handled = 0;
        for p in page {
            if handled > 0 && Instant::now() >= deadline {
                break;
            }
            handled += 1;
            let seq = p.seq;
            match self.step(p, blocked) {
                Step::Wait => {}
                Step::Sent(s) => {
                    // One unsettled event per object: a later one could be acked while
                    // this one fails, and arrive first. It waits for the next round.
                    blocked.insert(s.ino);
                    self.rescan = true;
                    sent.push(*s)
                }
                Step::Done => done.seqs.push(seq),
                Step::Drop(why) => {
                    tracing::warn!(seq, reason = %why, "event dropped");
                    done.dropped += 1;
                    done.seqs.push(seq)
                }
            }
        }
        let flushed = self.flush_all(&sent);
        for s in sent {
            match self.settle(&s.topic, s.out, &flushed) {
                Ok(()) => {
                    done.delivered += 1;
                    done.seqs.push(s.seq)
                }
                Err(why) => {
                    blocked.insert(s.ino);
                    let (name, retry) = (s.topic.name.clone(), s.topic.retry);
                    if self.failed((s.seq, s.ino), &name, &retry, &why) {
                        done.dropped += 1;
                        done.seqs.push(s.seq)
                    }
                }
            }
        }
        (done, handled)
    }

    /// Counts events that left the queue: only once they are gone, so that the stats never
    /// show an event as delivered or dropped and still pending.
    fn finished(&mut self, f: &Finished) {
        for seq in &f.seqs {
            self.retries.remove(seq);
        }
        // Release: a reader that sees these counts sees the events gone from the queue.
        let c = &self.counters;
        c.delivered.fetch_add(f.delivered, Ordering::Release);
        c.dropped.fetch_add(f.dropped, Ordering::Release);
    }

    /// What to do with one pending event now.
    fn step(&mut self, p: &PendingEvent, blocked: &mut HashSet<u64>) -> Step {
        let seq = p.seq;
        if let Some(r) = self.retries.get(&seq).filter(|r| r.due > Instant::now()) {
            blocked.insert(r.ino);
            return Step::Wait;
        }
        let event = match &p.event {
            Ok(e) => e,
            Err(e) => return Step::Drop(format!("queued event {seq}: {e}")),
        };
        if p.held || blocked.contains(&event.ino) {
            blocked.insert(event.ino);
            return Step::Wait;
        }
        let settings = self.routes.settings();
        let step = match event.target.starts_with("call:") {
            true => self.trigger(seq, event, &settings),
            false => self.deliver(seq, event, &settings),
        };
        if matches!(step, Step::Wait) {
            blocked.insert(event.ino);
        }
        step
    }

    /// Publishes one event to its topic (through its bucket's script, if any).
    fn deliver(&mut self, seq: u64, event: &QueuedEvent, settings: &Settings) -> Step {
        let id = record::event_id(seq, self.core.store_id());
        let Some(topic) = settings.topics.get(&event.target).cloned() else {
            return Step::Drop(format!("{id}: topic {} was removed", event.target));
        };
        if let Some(ttl) = topic.time_to_live {
            let age = record::millis(SystemTime::now()).saturating_sub(event.time_ms);
            if age > ttl.as_millis() as u64 {
                return Step::Drop(format!(
                    "{id}: older than time_to_live of topic {}",
                    topic.name
                ));
            }
        }
        // The server not connected: the event waits without using up a retry, and without
        // running the script (whose side effects, like RGW counters, would repeat).
        if self.down.contains(&topic.connection_key()) || !self.connected(&topic) {
            return Step::Wait;
        }
        let record = record::record(event, seq, self.core.store_id(), &topic.opaque_data);
        let script = settings.scripts.get(&event.bucket);
        let messages = match script::event_messages(&self.core, settings, script, &record, &topic) {
            Ok(m) => m,
            Err(e) => {
                self.counters.script_errors.fetch_add(1, Ordering::Relaxed);
                let why = format!("script of bucket {}: {e}", event.bucket);
                return self.fail((seq, event.ino), &topic.name, &topic.retry, &why);
            }
        };
        // A script may route to another topic whose server is not connected: publish
        // fails and the event is retried.
        match self.nats.publish(&messages, Some(&id), &settings.topics) {
            Ok(out) => Step::Sent(Box::new(Sent {
                seq,
                ino: event.ino,
                topic,
                out,
            })),
            Err(why) => self.fail((seq, event.ino), &topic.name, &topic.retry, &why),
        }
    }

    /// Runs one event's trigger.
    fn trigger(&mut self, seq: u64, event: &QueuedEvent, settings: &Settings) -> Step {
        let n = settings.notification(&event.bucket, &event.notification);
        let Some((
            n,
            Target::Call {
                class,
                method,
                input,
            },
        )) = n.map(|n| (n, &n.target))
        else {
            return Step::Drop(format!(
                "trigger {} of bucket {} was removed",
                event.notification, event.bucket
            ));
        };
        let call = (
            n.id.as_str(),
            class.as_str(),
            method.as_str(),
            input.as_slice(),
        );
        let c = &self.counters;
        match trigger::run(&self.core, self.after.as_ref(), event, call) {
            Ok(Ran::Done) => {
                c.triggers_run.fetch_add(1, Ordering::Relaxed);
                Step::Done
            }
            Ok(Ran::Skipped(why)) => {
                c.triggers_skipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(trigger = %n.id, reason = %why, "trigger skipped");
                Step::Done
            }
            Ok(Ran::Failed(why)) => {
                c.triggers_failed.fetch_add(1, Ordering::Relaxed);
                let name = format!("call:{class}.{method}");
                self.fail((seq, event.ino), &name, &n.retry, &why)
            }
            Err(e) => {
                c.triggers_failed.fetch_add(1, Ordering::Relaxed);
                let name = format!("call:{class}.{method}");
                self.fail((seq, event.ino), &name, &n.retry, &e.to_string())
            }
        }
    }

    /// Whether `topic`'s connection is up (recorded in its state); if not, it is marked
    /// down until the next sweep or a reconnect.
    fn connected(&mut self, topic: &Topic) -> bool {
        let up = self.nats.is_up(topic);
        self.counters.topic_connected(&topic.name, up);
        if !up {
            self.down.insert(topic.connection_key());
            let why = format!("not connected to {}; its events wait", topic.url);
            self.counters.topic_failed(&topic.name, &why);
            self.warn(&topic.name, &why);
        }
        up
    }

    /// Flushes each connection the page's sent events published on, once for them all.
    fn flush_all(&self, sent: &[Sent]) -> Flushed {
        let mut flushed = HashMap::new();
        for key in sent.iter().flat_map(|s| &s.out.conns) {
            if !flushed.contains_key(key) {
                flushed.insert(key.clone(), self.nats.flush(key));
            }
        }
        flushed
    }

    /// Settles one sent event: its connections' flushes (`flushed`), then its PubAcks.
    fn settle(
        &mut self,
        topic: &Topic,
        out: Outgoing,
        flushed: &Flushed,
    ) -> std::result::Result<(), String> {
        let mut result = Ok(());
        for key in &out.conns {
            if let Some(Err(e)) = flushed.get(key) {
                result = Err(e.clone());
            }
        }
        for ack in out.acks {
            if let Err(e) = self.nats.ack(ack) {
                result = Err(e);
            }
        }
        if result.is_ok() {
            let c = &self.counters;
            c.published.fetch_add(out.messages, Ordering::Relaxed);
            c.topic_delivered(&topic.name, out.messages);
        }
        result
    }

    /// A failed attempt, as a step.
    fn fail(&mut self, at: (u64, u64), name: &str, retry: &RetryPolicy, why: &str) -> Step {
        match self.failed(at, name, retry, why) {
            true => Step::Drop(format!("{name}: {why}")),
            false => Step::Wait,
        }
    }

    /// Records a failed attempt of event `seq` of object `ino` bound for `name`; returns
    /// true if the event is to be dropped.
    fn failed(
        &mut self,
        (seq, ino): (u64, u64),
        name: &str,
        retry: &RetryPolicy,
        why: &str,
    ) -> bool {
        self.counters.topic_failed(name, why);
        self.warn(name, why);
        let r = self.retries.entry(seq).or_insert(Retry {
            attempts: 0,
            due: Instant::now(),
            ino,
        });
        r.attempts += 1;
        if retry.max_retries > 0 && r.attempts > retry.max_retries {
            tracing::warn!(
                seq,
                target = name,
                attempts = r.attempts,
                error = why,
                "event dropped after max_retries"
            );
            self.counters.topic_event_failed(name, true);
            return true;
        }
        r.due = Instant::now() + retry.backoff(r.attempts);
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        self.counters.topic_event_failed(name, false);
        false
    }

    /// Logs a delivery failure at warn, at most once per `WARN_EVERY` for each target.
    fn warn(&mut self, name: &str, why: &str) {
        let now = Instant::now();
        let entry = self
            .warned
            .entry(name.to_string())
            .or_insert((now - WARN_EVERY, 0));
        if now.duration_since(entry.0) >= WARN_EVERY {
            let since = std::mem::take(&mut entry.1);
            tracing::warn!(
                target = name,
                error = why,
                more_since_last_warning = since,
                "delivery failed; will retry"
            );
            entry.0 = now;
        } else {
            entry.1 += 1;
            tracing::debug!(target = name, error = why, "delivery failed; will retry");
        }
    }

    /// One run of the background script, if there is one; its messages go out at once.
    fn background(&mut self) {
        let settings = self.routes.settings();
        let Some(script) = settings.background.clone() else {
            return;
        };
        self.counters
            .background_runs
            .fetch_add(1, Ordering::Relaxed);
        let messages: Vec<Msg> = match script::background_messages(&self.core, &settings, &script) {
            Ok(m) => m,
            Err(e) => {
                self.counters.script_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "background script failed");
                return;
            }
        };
        let sent = self.nats.publish(&messages, None, &settings.topics);
        let flushed = sent.and_then(|out| {
            let mut r = Ok(());
            for key in &out.conns {
                r = r.and(self.nats.flush(key));
            }
            for ack in out.acks {
                r = r.and(self.nats.ack(ack));
            }
            r
        });
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "background script messages were not all published");
        }
    }
}

/// The lower of two sequence numbers, either of which may be missing.
fn first(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
