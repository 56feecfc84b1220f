//! Events on the core side: the narrow API between the filesystem's semantics and the
//! delivery in `notify` (SPEC section 4).
//!
//! - **Queueing.** A completed change of an object in a watched bucket becomes a `Change`;
//!   the installed `Subscriptions` (notify's settings) say which notifications want it, and
//!   each gets a `QueuedEvent` in the **same batch** as the change, numbered from a sequence
//!   reserved ahead in `meta`. Only buckets with a notification pay anything. The rules of
//!   which change is which event live in `writes` (Put at close) and `changes` (Delete,
//!   Copy, metadata, handler calls); where an object is (bucket and key) in `places`.
//! - **Delivery.** The dispatcher reads pending events from a sequence number
//!   (`pending_events`), acknowledges delivered or dropped ones (`ack_events`), and is woken
//!   with the lowest sequence committed since it last looked (commits of different threads
//!   land out of order). An event can be *held*: a Put recorded at a close(2) while the file
//!   is still open through another descriptor; it blocks its object's later events until the
//!   last close confirms it (or a later close replaces it). Holds live in memory only, so
//!   after a restart nothing is held.
//! - **Settings.** Topics, notifications and scripts are stored here as the text they were
//!   written as; notify checks them before they are stored and parses them when they change.
//!
//! core knows nothing of NATS, JSON records or filters: that is all notify's.

mod changes;
mod places;
mod writes;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::counter::Counter;
use super::{Core, ROOT};
use crate::error::{Error, Result};
use crate::store::codec::events::QueuedEvent;
use crate::store::keys::{self, Ino};
use crate::store::{Batch, Store};

pub use crate::store::codec::events::EventKind;
pub(super) use changes::Side;
pub(super) use places::md5_of;
pub use writes::Writes;

/// Sequence numbers are reserved this many at a time.
const SEQ_BLOCK: u64 = 1 << 16;

/// A notification setting as stored (the `notify` column family) and shown under
/// `/.lunafs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Setting {
    /// `topics/NAME.toml`
    Topic(String),
    /// `notifications/BUCKET.toml`
    Notifications(String),
    /// `notify/BUCKET.lua`: the bucket's notification script.
    Script(String),
    /// `background.lua`
    Background,
}

impl Setting {
    fn key(&self) -> (u8, &str) {
        match self {
            Setting::Topic(n) => (keys::SETTING_TOPIC, n),
            Setting::Notifications(b) => (keys::SETTING_NOTIFICATIONS, b),
            Setting::Script(b) => (keys::SETTING_SCRIPT, b),
            Setting::Background => (keys::SETTING_BACKGROUND, ""),
        }
    }

    /// The topic or bucket name ("" for the background script).
    pub fn name(&self) -> &str {
        self.key().1
    }

    pub fn describe(&self) -> String {
        match self {
            Setting::Topic(n) => format!("topic {n}"),
            Setting::Notifications(b) => format!("notifications of bucket {b}"),
            Setting::Script(b) => format!("notification script of bucket {b}"),
            Setting::Background => "background script".into(),
        }
    }

    const KINDS: [fn(String) -> Setting; 4] = [
        Setting::Topic,
        Setting::Notifications,
        Setting::Script,
        background,
    ];
}

fn background(_: String) -> Setting {
    Setting::Background
}

/// An object's omap entries, in key order.
pub type Omap = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads one omap entry of the changed object, as the change leaves it.
pub type OmapGet<'a> = dyn Fn(&[u8]) -> Result<Option<Vec<u8>>> + 'a;

/// A completed change of one object, before notify routes it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: EventKind,
    pub ino: Ino,
    pub bucket: String,
    pub bucket_id: Ino,
    pub bucket_owner: u32,
    pub key: Vec<u8>,
    pub size: u64,
    /// MD5 hex of the content ("" for deletes).
    pub etag: String,
    /// uid of the process that made the change.
    pub uid: u32,
    pub time_ms: u64,
    /// The omap as the change leaves it, when the change knows it (a handler call's is not
    /// committed yet); otherwise read from the store once a notification wants the event.
    pub metadata: Option<Omap>,
    /// The notification whose trigger made this change: it is not routed back to it.
    pub cause: Option<String>,
}

/// Where one notification wants an event to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub notification: String,
    /// A topic, or a trigger (notify's own notation).
    pub target: String,
}

/// What core needs of the notification settings; notify implements it.
pub trait Subscriptions: Send + Sync {
    /// Whether bucket `name` has a notification (elsewhere no event work is done).
    fn watches(&self, bucket: &str) -> bool;
    /// The notifications that want `change`. `omap` reads one entry of the object's omap
    /// as the change leaves it (for omap filters).
    fn routes(&self, change: &Change, omap: &OmapGet<'_>) -> Result<Vec<Route>>;
    /// Checks a setting before it is stored (a bad one is refused with its message).
    fn check_put(&self, setting: &Setting, text: &[u8]) -> Result<()>;
    /// Checks that a setting may be removed (e.g. no notification uses the topic).
    fn check_remove(&self, setting: &Setting) -> Result<()>;
    /// The stored settings, after every change of them (and when installed).
    fn load(&self, stored: &[(Setting, Vec<u8>)]);
}

/// A queued event as the dispatcher reads it.
#[derive(Debug)]
pub struct PendingEvent {
    pub seq: u64,
    /// The event, or why it does not decode (it can never be delivered).
    pub event: Result<QueuedEvent>,
    /// A Put recorded at a close while the file is still open: not deliverable yet, and
    /// its object's later events wait behind it.
    pub held: bool,
}

/// The sequence numbers of the entries a change queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Enqueued {
    seqs: Vec<u64>,
}

impl Enqueued {
    pub(super) const NONE: Enqueued = Enqueued { seqs: Vec::new() };

    pub(super) fn add(&mut self, other: Enqueued) {
        self.seqs.extend(other.seqs);
    }

    fn lowest(&self) -> u64 {
        self.seqs.iter().copied().min().unwrap_or(u64::MAX)
    }
}

pub struct Events {
    subscriptions: RwLock<Option<Arc<dyn Subscriptions>>>,
    /// Inode numbers of the buckets that have notifications.
    watched: RwLock<HashSet<Ino>>,
    seq: Counter,
    /// Serializes changes of the settings (check, store, load).
    changing: Mutex<()>,
    store_id: String,
    writes: Writes,
    waker: RwLock<Option<Arc<dyn Fn() + Send + Sync>>>,
    /// Events queued since the mount.
    queued: AtomicU64,
    /// Events in the queue: a gauge, counted from the store at open.
    pending: AtomicU64,
    /// The lowest sequence number committed since the dispatcher last asked (u64::MAX: none).
    committed_low: AtomicU64,
}

impl Events {
    pub(super) fn open(store: &Store) -> Result<Events> {
        let store_id = match store.store_id()? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = crate::digest::hex(&crate::digest::random_bytes()?);
                let mut batch = store.batch();
                batch.put_store_id(id.as_bytes());
                batch.commit()?;
                id
            }
        };
        let next = store
            .event_reserved()?
            .max(store.last_event()?.map_or(1, |s| s + 1));
        Ok(Events {
            subscriptions: RwLock::default(),
            watched: RwLock::default(),
            seq: Counter::new(
                "event sequence numbers",
                keys::META_EVENT_RESERVED,
                next,
                SEQ_BLOCK,
                u64::MAX,
            ),
            changing: Mutex::new(()),
            store_id,
            writes: Writes::default(),
            waker: RwLock::default(),
            queued: AtomicU64::new(0),
            pending: AtomicU64::new(store.event_count()?),
            committed_low: AtomicU64::new(u64::MAX),
        })
    }

    fn subscriptions(&self) -> Option<Arc<dyn Subscriptions>> {
        self.subscriptions.read().clone()
    }

    fn watched(&self, bucket: Ino) -> bool {
        self.watched.read().contains(&bucket)
    }

    fn any_watched(&self) -> bool {
        !self.watched.read().is_empty()
    }

    fn committed(&self, q: &Enqueued) {
        let n = q.seqs.len() as u64;
        self.queued.fetch_add(n, Ordering::Relaxed);
        self.pending.fetch_add(n, Ordering::Relaxed);
        self.wake(q.lowest());
    }

    /// Tells the dispatcher to look again from `seq` at the latest.
    fn wake(&self, seq: u64) {
        self.committed_low.fetch_min(seq, Ordering::AcqRel);
        if let Some(w) = self.waker.read().as_ref() {
            w();
        }
    }
}

/// The event API the dispatcher uses.
impl Core {
    /// Installs the notification settings' routing (at mount); loads the stored settings
    /// into it.
    pub fn set_subscriptions(&self, subs: Arc<dyn Subscriptions>) -> Result<()> {
        let _one = self.events.changing.lock();
        *self.events.subscriptions.write() = Some(subs);
        self.reload_settings()
    }

    /// Up to `max` queued events from sequence number `from` on, in order.
    /// An event is held if it was held before the read or after it: a Put is held from
    /// before its commit and stays held until after the commit that replaces it, so the read
    /// (on a shared store, a round trip to etcd) cannot come between and find it unheld.
    pub fn pending_events(&self, from: u64, max: usize) -> Result<Vec<PendingEvent>> {
        let before = self.events.writes.held();
        let events = self.store.events(from, max)?;
        let after = self.events.writes.held();
        Ok(events
            .into_iter()
            .map(|(seq, event)| PendingEvent {
                seq,
                event,
                held: before.contains_key(&seq) || after.contains_key(&seq),
            })
            .collect())
    }

    /// The objects of held Puts below sequence number `seq`: a dispatcher round that starts
    /// there keeps their later events waiting behind them.
    pub fn held_objects_below(&self, seq: u64) -> Vec<Ino> {
        let held = self.events.writes.held();
        held.into_iter()
            .filter(|&(s, _)| s < seq)
            .map(|(_, ino)| ino)
            .collect()
    }

    /// Removes delivered (or dropped) events from the queue.
    pub fn ack_events(&self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut batch = self.store.batch();
        for &seq in seqs {
            batch.delete_event(seq);
        }
        batch.commit()?;
        let pending = &self.events.pending;
        let n = seqs.len() as u64;
        let _ = pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
            Some(p.saturating_sub(n))
        });
        Ok(())
    }

    /// Events waiting in the queue (undelivered, held ones included).
    pub fn events_pending(&self) -> u64 {
        self.events.pending.load(Ordering::Relaxed)
    }

    /// Events queued since the mount.
    pub fn events_queued(&self) -> u64 {
        self.events.queued.load(Ordering::Relaxed)
    }

    /// The lowest sequence number committed (or released from a hold) since the last call,
    /// u64::MAX if none.
    pub fn take_committed_low(&self) -> u64 {
        self.events.committed_low.swap(u64::MAX, Ordering::AcqRel)
    }

    /// Whether this mount delivers events and runs the background script: on a store shared
    /// by several mounts, one of them at a time (the store's leader).
    pub fn leads(&self) -> bool {
        self.store.leads()
    }

    /// Another mount queued (or delivered) event `seq`: the dispatcher, if this mount
    /// leads, looks again from there.
    pub(super) fn queue_changed_elsewhere(&self, seq: u64) {
        self.events.wake(seq);
    }

    /// Called after every commit that queued events.
    pub fn set_event_waker(&self, waker: Arc<dyn Fn() + Send + Sync>) {
        *self.events.waker.write() = Some(waker);
    }

    /// The store's random id (event ids carry it).
    pub fn store_id(&self) -> &str {
        &self.events.store_id
    }
}

/// Settings, as stored text.
impl Core {
    pub fn setting_get(&self, setting: &Setting) -> Result<Option<Vec<u8>>> {
        let (kind, name) = setting.key();
        self.store.notify_get(kind, name)
    }

    /// Every stored setting of one kind, `make` being its constructor (`Setting::Topic`, ...).
    pub fn settings_of(&self, make: fn(String) -> Setting) -> Result<Vec<Setting>> {
        let (kind, _) = make(String::new()).key();
        Ok(self
            .store
            .notify_list(kind)?
            .into_iter()
            .map(|(n, _)| make(n))
            .collect())
    }

    /// Checks (through the installed subscriptions) and stores a setting; it is in force
    /// for the next event.
    pub fn setting_put(&self, setting: &Setting, text: &[u8]) -> Result<()> {
        let _one = self.events.changing.lock();
        let subs = self.events.subscriptions().ok_or_else(|| {
            Error::Unsupported("notification settings (no notification service)".into())
        })?;
        if !matches!(setting, Setting::Topic(_) | Setting::Background) {
            super::Name::new(setting.name().as_bytes())?;
        }
        subs.check_put(setting, text)?;
        let (kind, name) = setting.key();
        let mut batch = self.store.batch();
        batch.put_notify(kind, name, text);
        batch.commit()?;
        self.reload_settings()
    }

    /// Removes a setting, if the subscriptions allow it (EBUSY for a topic in use).
    pub fn setting_remove(&self, setting: &Setting) -> Result<()> {
        let _one = self.events.changing.lock();
        let (kind, name) = setting.key();
        if self.store.notify_get(kind, name)?.is_none() {
            return Err(Error::NotFound(setting.describe()));
        }
        if let Some(subs) = self.events.subscriptions() {
            subs.check_remove(setting)?;
        }
        let mut batch = self.store.batch();
        batch.delete_notify(kind, name);
        batch.commit()?;
        self.reload_settings()
    }

    /// Hands the stored settings to the subscriptions and finds the watched buckets
    /// (under `changing`).
    fn reload_settings(&self) -> Result<()> {
        let Some(subs) = self.events.subscriptions() else {
            return Ok(());
        };
        let mut stored = Vec::new();
        for make in Setting::KINDS {
            let (kind, _) = make(String::new()).key();
            for (name, text) in self.store.notify_list(kind)? {
                stored.push((make(name), text));
            }
        }
        subs.load(&stored);
        self.find_watched(subs.as_ref())
    }

    fn find_watched(&self, subs: &dyn Subscriptions) -> Result<()> {
        let watched = self
            .store
            .dentries(ROOT)?
            .into_iter()
            .filter(|(name, _)| subs.watches(&String::from_utf8_lossy(name)))
            .map(|(_, d)| d.ino)
            .collect();
        *self.events.watched.write() = watched;
        Ok(())
    }

    /// Another mount changed the settings: load them again.
    pub(super) fn reload_notifications(&self) {
        let _one = self.events.changing.lock();
        if let Err(e) = self.reload_settings() {
            tracing::error!(error = %e, "reloading notification settings changed by another mount");
        }
    }

    /// A bucket was added, removed or renamed: which buckets are watched may have changed.
    pub(super) fn root_changed(&self) {
        let Some(subs) = self.events.subscriptions() else {
            return;
        };
        // Under `changing`, so it cannot interleave with a settings change.
        let _one = self.events.changing.lock();
        if let Err(e) = self.find_watched(subs.as_ref()) {
            tracing::error!(error = %e, "finding the buckets with notifications");
        }
    }
}

/// Queueing, for the rules in `writes` and `changes`.
impl Core {
    /// Whether `inode`'s bucket has notifications (callers skip event work otherwise).
    pub(super) fn watches(&self, inode: &crate::store::codec::Inode) -> bool {
        self.events.watched(inode.bucket)
    }

    /// Puts one queue entry per notification that wants `change` into `batch`. The omap is
    /// read only if one does.
    fn queue(&self, batch: &mut Batch<'_>, mut change: Change) -> Result<Enqueued> {
        let Some(subs) = self.events.subscriptions() else {
            return Ok(Enqueued::NONE);
        };
        let ino = change.ino;
        let routes = {
            let known = change.metadata.as_ref();
            let omap = |k: &[u8]| match known {
                Some(m) => Ok(m.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())),
                None => self.store.omap_get(ino, k),
            };
            subs.routes(&change, &omap)?
        };
        if routes.is_empty() {
            return Ok(Enqueued::NONE);
        }
        let metadata = match change.metadata.take() {
            Some(m) => m,
            None => self.store.omap_entries(ino)?,
        };
        let mut queued = Enqueued::NONE;
        for route in routes {
            let seq = self.events.seq.next(&self.store)?;
            let event = QueuedEvent {
                kind: change.kind,
                ino,
                bucket: change.bucket.clone(),
                bucket_id: change.bucket_id,
                bucket_owner: change.bucket_owner,
                key: change.key.clone(),
                size: change.size,
                etag: change.etag.clone(),
                uid: change.uid,
                time_ms: change.time_ms,
                metadata: metadata.clone(),
                notification: route.notification,
                target: route.target,
            };
            batch.put_event(seq, &event);
            queued.seqs.push(seq);
        }
        Ok(queued)
    }

    /// Tells the dispatcher about committed events.
    pub(super) fn queued(&self, q: Enqueued) {
        if !q.seqs.is_empty() {
            self.events.committed(&q);
        }
    }
}

/// Milliseconds since the epoch, now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
