//! Bucket notifications on the core side: the settings (topics, per-bucket notifications and
//! scripts, the background script) as stored and cached, and the queueing of events in the
//! same batch as the change that causes them (SPEC section 4).
//!
//! - A written file gives `ObjectCreated:Put` at the close of its last writer (`end_write`),
//!   not per write; a new file and an `O_TRUNC` open count as written. Its eTag is an MD5
//!   fed by the writes while they run in order from offset 0 (cp, rsync, tar), otherwise
//!   computed from the content at close. The digest is kept (`keys::ETAG`) for renames.
//! - Unlink of the last name gives `ObjectRemoved:Delete`; rename gives `ObjectCreated:Copy`
//!   at the new key and `ObjectRemoved:Delete` at the old one, for every object under a
//!   renamed directory; a handler call that changed data gives `ObjectCreated:Put`.
//! - Only buckets with a notification do any of this work: elsewhere nothing is tracked.
//!   Each matching notification gets its own queue entry (`events::entry`), numbered from a
//!   sequence reserved ahead in `meta` (as inode numbers are), so numbers are never reused.
//!
//! Files are reached by inode at close, so the key needs the file's name: names are
//! remembered as the kernel learns them (lookup, create, readdir, rename), checked against
//! the dentry before use, and found by a scan of the bucket when unknown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use md5::{Digest, Md5};
use parking_lot::{Mutex, RwLock};

use super::{Core, Txn, ROOT};
use crate::error::{Error, Result};
use crate::events::{self, config, Change, Notification, Topic};
use crate::lua::digest::hex;
use crate::lua::{Engine, Script};
use crate::store::codec::{Kind, Timestamp};
use crate::store::keys::Ino;
use crate::store::{Batch, Store};

/// Sequence numbers are reserved this many at a time.
const SEQ_BLOCK: u64 = 1 << 16;

/// Remembered file names before the cache is emptied (a miss costs a scan, not an error).
const MAX_NAMES: usize = 1 << 20;

/// Bytes read at a time when an eTag has to be computed from the content.
const HASH_STEP: u64 = 1 << 20;

/// A notification setting as stored (the `notify` column family) and shown under
/// `/.lunafs`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Item {
    /// `topics/NAME.toml`
    Topic(String),
    /// `notifications/BUCKET.toml`
    Notifications(String),
    /// `notify/BUCKET.lua`: the bucket's notification script.
    Script(String),
    /// `background.lua`
    Background,
}

impl Item {
    fn key(&self) -> (u8, &str) {
        match self {
            Item::Topic(n) => (b't', n),
            Item::Notifications(b) => (b'n', b),
            Item::Script(b) => (b's', b),
            Item::Background => (b'b', ""),
        }
    }

    /// The topic or bucket name ("" for the background script).
    pub fn name(&self) -> &str {
        self.key().1
    }

    pub fn describe(&self) -> String {
        match self {
            Item::Topic(n) => format!("topic {n}"),
            Item::Notifications(b) => format!("notifications of bucket {b}"),
            Item::Script(b) => format!("notification script of bucket {b}"),
            Item::Background => "background script".into(),
        }
    }
}

/// The settings in force, replaced whole on every change.
#[derive(Default)]
pub struct Settings {
    pub topics: BTreeMap<String, Topic>,
    pub buckets: BTreeMap<String, Vec<Notification>>,
    pub scripts: BTreeMap<String, Arc<Script>>,
    pub background: Option<Arc<Script>>,
    /// Inode numbers of the buckets that have notifications.
    watched: HashSet<Ino>,
}

/// An object open for writing in a watched bucket.
struct Writing {
    writers: u32,
    written: bool,
    uid: u32,
    /// The MD5 of bytes `0..next`, while writes have come in order.
    md5: Option<(Md5, u64)>,
}

/// What a change queued: how many entries, and the lowest sequence number among them.
/// Commits of different threads can land out of sequence order, so after each commit the
/// dispatcher is told where its next round must start at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Enqueued {
    count: usize,
    lowest: u64,
}

impl Enqueued {
    pub(super) const NONE: Enqueued = Enqueued {
        count: 0,
        lowest: u64::MAX,
    };

    fn one(seq: u64) -> Enqueued {
        Enqueued {
            count: 1,
            lowest: seq,
        }
    }

    pub(super) fn add(&mut self, other: Enqueued) {
        self.count += other.count;
        self.lowest = self.lowest.min(other.lowest);
    }
}

pub struct Events {
    settings: RwLock<Arc<Settings>>,
    generation: AtomicU64,
    next_seq: AtomicU64,
    seq_reserved: AtomicU64,
    reserving: Mutex<()>,
    /// Serializes changes of the settings (validate, store, reload).
    changing: Mutex<()>,
    store_id: String,
    writing: Mutex<HashMap<Ino, Writing>>,
    /// How many objects `writing` holds: writes skip its lock while it is none.
    tracked: AtomicUsize,
    names: Mutex<HashMap<Ino, (Ino, Vec<u8>)>>,
    waker: RwLock<Option<Arc<dyn Fn() + Send + Sync>>>,
    queued: AtomicU64,
    /// The lowest sequence number committed since the dispatcher last asked (u64::MAX: none).
    committed_low: AtomicU64,
}

impl Events {
    pub(super) fn open(store: &Store) -> Result<Events> {
        let store_id = match store.store_id()? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = random_id()?;
                let mut batch = store.batch();
                batch.put_store_id(id.as_bytes());
                batch.commit()?;
                id
            }
        };
        let next = store
            .event_reserved()?
            .max(store.last_event()?.map_or(1, |s| s + 1));
        let events = Events {
            settings: RwLock::default(),
            generation: AtomicU64::new(0),
            next_seq: AtomicU64::new(next),
            seq_reserved: AtomicU64::new(next),
            reserving: Mutex::new(()),
            changing: Mutex::new(()),
            store_id,
            writing: Mutex::default(),
            tracked: AtomicUsize::new(0),
            names: Mutex::default(),
            waker: RwLock::default(),
            queued: AtomicU64::new(0),
            committed_low: AtomicU64::new(u64::MAX),
        };
        events.reload(store)?;
        Ok(events)
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().clone()
    }

    /// Events queued since the mount (for stats).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Called after every commit that queued events (the dispatcher wakes up).
    pub fn set_waker(&self, waker: Arc<dyn Fn() + Send + Sync>) {
        *self.waker.write() = Some(waker);
    }

    /// The lowest sequence number committed since the last call (u64::MAX if none): the
    /// dispatcher reads the queue from there, not from its start, so it does not walk over
    /// the tombstones of the entries it already delivered.
    pub fn take_committed_low(&self) -> u64 {
        self.committed_low.swap(u64::MAX, Ordering::AcqRel)
    }

    fn committed(&self, q: Enqueued) {
        self.committed_low.fetch_min(q.lowest, Ordering::AcqRel);
        self.queued.fetch_add(q.count as u64, Ordering::Relaxed);
        if let Some(w) = self.waker.read().as_ref() {
            w();
        }
    }

    /// Rebuilds the cached settings from the store. Stored settings were validated when
    /// written; one that no longer parses (a topic it names was removed) is logged and
    /// skipped rather than stopping the mount.
    fn reload(&self, store: &Store) -> Result<()> {
        let mut s = Settings::default();
        for (name, text) in store.notify_list(b't')? {
            match config::parse_topic(&name, &String::from_utf8_lossy(&text)) {
                Ok(t) => {
                    s.topics.insert(name, t);
                }
                Err(e) => tracing::error!(error = %e, "skipping a stored topic"),
            }
        }
        for (bucket, text) in store.notify_list(b'n')? {
            match config::parse_notifications(&bucket, &String::from_utf8_lossy(&text)) {
                Ok(list) if !list.is_empty() => {
                    if let Some(d) = store.dentry(ROOT, bucket.as_bytes())? {
                        s.watched.insert(d.ino);
                    }
                    s.buckets.insert(bucket, list);
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "skipping stored notifications"),
            }
        }
        let script = |name: String, source: Vec<u8>| {
            Arc::new(Script {
                name,
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                source: source.into(),
            })
        };
        for (bucket, source) in store.notify_list(b's')? {
            let s2 = script(format!("notify/{bucket}.lua"), source);
            s.scripts.insert(bucket, s2);
        }
        s.background = store
            .notify_get(b'b', "")?
            .map(|src| script("background.lua".into(), src));
        *self.settings.write() = Arc::new(s);
        Ok(())
    }

    fn watched(&self, bucket: Ino) -> bool {
        self.settings.read().watched.contains(&bucket)
    }

    /// Whether any bucket has notifications (the per-open check skips everything if not).
    fn any_watched(&self) -> bool {
        !self.settings.read().watched.is_empty()
    }

    /// Remembers that `ino` is called `name` in `parent` (files of watched buckets only).
    pub(super) fn remember(&self, bucket: Ino, ino: Ino, parent: Ino, name: &[u8]) {
        if self.watched(bucket) {
            let mut names = self.names.lock();
            if names.len() >= MAX_NAMES {
                names.clear();
            }
            names.insert(ino, (parent, name.to_vec()));
        }
    }

    fn next_seq(&self, store: &Store) -> Result<u64> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if seq >= self.seq_reserved.load(Ordering::Acquire) {
            let _one = self.reserving.lock();
            if seq >= self.seq_reserved.load(Ordering::Acquire) {
                let below = seq + SEQ_BLOCK;
                let mut batch = store.batch();
                batch.put_event_reserved(below);
                batch.commit()?;
                self.seq_reserved.store(below, Ordering::Release);
            }
        }
        Ok(seq)
    }
}

/// 16 random hex digits from the kernel.
fn random_id() -> Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(hex(&buf))
}

/// Where an object is: its bucket and key.
#[derive(Clone)]
struct Place {
    bucket: String,
    bucket_ino: Ino,
    bucket_owner: u32,
    key: String,
}

impl Core {
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// A stored setting's text.
    pub fn notify_get(&self, item: &Item) -> Result<Option<Vec<u8>>> {
        let (kind, name) = item.key();
        self.store.notify_get(kind, name)
    }

    /// Every stored item of one kind, `make` being its constructor (`Item::Topic`, ...).
    pub fn notify_items(&self, make: fn(String) -> Item) -> Result<Vec<Item>> {
        let (kind, _) = make(String::new()).key();
        Ok(self
            .store
            .notify_list(kind)?
            .into_iter()
            .map(|(n, _)| make(n))
            .collect())
    }

    /// Validates and stores a setting; it is in force for the next event.
    pub fn notify_put(&self, item: &Item, text: &[u8]) -> Result<()> {
        let _one = self.events.changing.lock();
        let utf8 = || {
            std::str::from_utf8(text)
                .map_err(|_| Error::InvalidArgument(format!("{}: not UTF-8", item.describe())))
        };
        match item {
            Item::Topic(name) => {
                config::parse_topic(name, utf8()?)?;
            }
            Item::Notifications(bucket) => {
                super::Name::new(bucket.as_bytes())?;
                let settings = self.events.settings();
                for n in config::parse_notifications(bucket, utf8()?)? {
                    if !settings.topics.contains_key(&n.topic) {
                        return Err(Error::InvalidArgument(format!(
                            "notification {} of bucket {bucket}: no topic {:?} (add it first)",
                            n.id, n.topic
                        )));
                    }
                }
            }
            Item::Script(bucket) => {
                super::Name::new(bucket.as_bytes())?;
                Engine::check(&format!("notify/{bucket}.lua"), text)?;
            }
            Item::Background => Engine::check("background.lua", text)?,
        }
        let (kind, name) = item.key();
        let mut batch = self.store.batch();
        batch.put_notify(kind, name, text);
        batch.commit()?;
        self.events.reload(&self.store)
    }

    /// Removes a setting. A topic that a notification names is refused (EBUSY).
    pub fn notify_remove(&self, item: &Item) -> Result<()> {
        let _one = self.events.changing.lock();
        let (kind, name) = item.key();
        if self.store.notify_get(kind, name)?.is_none() {
            return Err(Error::NotFound(item.describe()));
        }
        if let Item::Topic(topic) = item {
            let settings = self.events.settings();
            if let Some((bucket, n)) = settings
                .buckets
                .iter()
                .find_map(|(b, list)| list.iter().find(|n| &n.topic == topic).map(|n| (b, n)))
            {
                return Err(Error::Busy(format!(
                    "topic {topic}: notification {} of bucket {bucket} uses it",
                    n.id
                )));
            }
        }
        let mut batch = self.store.batch();
        batch.delete_notify(kind, name);
        batch.commit()?;
        self.events.reload(&self.store)
    }

    /// A bucket was added, removed or renamed: which buckets are watched may have changed.
    pub(super) fn root_changed(&self) {
        if !self.events.settings().buckets.is_empty() {
            // One reload at a time: a reload that read the settings before a concurrent
            // notify_put committed would otherwise install the old ones over the new.
            // (notify_put and notify_remove take no other lock while holding this one.)
            let _one = self.events.changing.lock();
            if let Err(e) = self.events.reload(&self.store) {
                tracing::error!(error = %e, "reloading notification settings");
            }
        }
    }

    /// An open for writing (`truncated`: a new file or O_TRUNC) by `uid`; pairs with
    /// `end_write`.
    pub fn begin_write(&self, ino: Ino, uid: u32, truncated: bool) -> Result<()> {
        if !self.events.any_watched() {
            return Ok(());
        }
        let inode = self.getattr(ino)?;
        if inode.kind != Kind::File || !self.events.watched(inode.bucket) {
            return Ok(());
        }
        let mut writing = self.events.writing.lock();
        let w = writing.entry(ino).or_insert_with(|| {
            self.events.tracked.fetch_add(1, Ordering::Relaxed);
            Writing {
                writers: 0,
                written: false,
                uid,
                md5: (inode.size == 0).then(|| (Md5::new(), 0)),
            }
        });
        w.writers += 1;
        w.uid = uid;
        if truncated {
            w.written = true;
            w.md5 = Some((Md5::new(), 0));
        }
        Ok(())
    }

    /// A write of `data` at `offset` was committed (under the object's lock, so no other
    /// write of the object runs meanwhile). The MD5 is fed outside the map's lock, which
    /// every writer of every watched object takes.
    pub(super) fn note_write(&self, ino: Ino, offset: u64, data: &[u8]) {
        if self.events.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let hasher = match self.events.writing.lock().get_mut(&ino) {
            Some(w) => {
                w.written = true;
                w.md5.take()
            }
            None => return,
        };
        let fed = match hasher {
            Some((mut h, next)) if next == offset => {
                h.update(data);
                Some((h, next + data.len() as u64))
            }
            _ => None,
        };
        if let Some(w) = self.events.writing.lock().get_mut(&ino) {
            w.md5 = fed;
        }
    }

    /// A handler call changed `ino`'s data: a writer's running MD5 no longer matches it (its
    /// close computes the eTag from the content).
    pub(super) fn note_rewritten(&self, ino: Ino) {
        if self.events.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(w) = self.events.writing.lock().get_mut(&ino) {
            w.md5 = None;
        }
    }

    /// The size of `ino` was set (under the object's lock).
    pub(super) fn note_truncate(&self, ino: Ino, size: u64) {
        if self.events.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(w) = self.events.writing.lock().get_mut(&ino) {
            w.written = true;
            w.md5 = match w.md5.take() {
                _ if size == 0 => Some((Md5::new(), 0)),
                Some((h, next)) if next == size => Some((h, next)),
                _ => None,
            };
        }
    }

    /// A close(2) of a writer (FUSE flush, which close waits for, unlike release): if it is
    /// the only writer, the written file's Put is queued now, so it is in the store when
    /// close returns. Writes after it (through a dup'd descriptor) make another at release.
    pub fn flush_write(&self, ino: Ino) -> Result<()> {
        if self.events.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        // Under the object's lock, so no write comes between the snapshot of the running
        // MD5 and the size it is checked against.
        let _held = self.locks.lock(&[ino]);
        let snapshot = match self.events.writing.lock().get_mut(&ino) {
            Some(w) if w.writers == 1 && w.written => {
                w.written = false;
                Some((w.uid, w.md5.clone()))
            }
            _ => None,
        };
        match snapshot {
            // If the Put cannot be queued, the file stays "written": the release tries again.
            Some((uid, md5)) => self.queue_put(ino, uid, md5).inspect_err(|_| {
                if let Some(w) = self.events.writing.lock().get_mut(&ino) {
                    w.written = true;
                }
            }),
            None => Ok(()),
        }
    }

    /// The close of a handle opened with `begin_write`: the last writer's close of a file
    /// written since its last Put queues an `ObjectCreated:Put`.
    pub fn end_write(&self, ino: Ino) -> Result<()> {
        if self.events.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let _held = self.locks.lock(&[ino]);
        let done = {
            let mut writing = self.events.writing.lock();
            match writing.get_mut(&ino) {
                Some(w) if w.writers > 1 => {
                    w.writers -= 1;
                    None
                }
                Some(_) => {
                    self.events.tracked.fetch_sub(1, Ordering::Relaxed);
                    writing.remove(&ino)
                }
                None => None,
            }
        };
        match done.filter(|w| w.written) {
            Some(w) => self.queue_put(ino, w.uid, w.md5),
            None => Ok(()),
        }
    }

    /// Queues the Put of a closed file (the caller holds the object's lock).
    fn queue_put(&self, ino: Ino, uid: u32, md5: Option<(Md5, u64)>) -> Result<()> {
        let inode = self.getattr(ino)?;
        if inode.nlink == 0 {
            return Ok(()); // removed while open: its Delete was queued already
        }
        let Some(place) = self.place_of_file(ino, inode.bucket)? else {
            return Ok(());
        };
        let etag = match md5 {
            Some((h, next)) if next == inode.size => hex(h.finalize().as_slice()),
            _ => self.content_md5(ino, inode.size)?,
        };
        let mut batch = self.store.batch();
        put_etag(&mut batch, ino, inode.size, inode.mtime, &etag);
        let change = self.change("ObjectCreated:Put", &place, ino, inode.size, etag, uid);
        let queued = self.queue(&mut batch, change)?;
        batch.commit()?;
        self.queued(queued);
        Ok(())
    }

    /// Queues the Delete of the last name of `ino`, `name` in `parent`, into `txn`.
    pub(super) fn queue_delete(
        &self,
        txn: &mut Txn<'_>,
        parent: Ino,
        name: &[u8],
        ino: Ino,
    ) -> Result<Enqueued> {
        if !self.events.watched(txn.get(parent)?.bucket) {
            return Ok(Enqueued::NONE);
        }
        let inode = txn.get(ino)?.clone();
        let Some(place) = self.place_in(parent, name)? else {
            return Ok(Enqueued::NONE);
        };
        let change = self.change(
            "ObjectRemoved:Delete",
            &place,
            ino,
            inode.size,
            String::new(),
            inode.uid,
        );
        self.queue(&mut txn.batch, change)
    }

    /// Queues Copy at the new place and Delete at the old one for `ino` (a file, or every
    /// file under a directory or bucket) moving from `name` in `parent` to `newname` in
    /// `newparent`. Runs before the rename's batch commits, so the store has the old names.
    pub(super) fn queue_rename(
        &self,
        txn: &mut Txn<'_>,
        (parent, name): (Ino, &[u8]),
        (newparent, newname): (Ino, &[u8]),
        ino: Ino,
        uid: u32,
    ) -> Result<Enqueued> {
        let (from, to) = if parent == ROOT {
            // A bucket renamed: its objects move from one bucket name to the other.
            let settings = self.events.settings();
            let named = |n: &[u8]| settings.buckets.contains_key(&*String::from_utf8_lossy(n));
            if !named(name) && !named(newname) {
                return Ok(Enqueued::NONE);
            }
            let b = txn.get(ino)?.clone();
            let at = |n: &[u8]| Place {
                bucket: String::from_utf8_lossy(n).into_owned(),
                bucket_ino: ino,
                bucket_owner: b.uid,
                key: String::new(),
            };
            (at(name), at(newname))
        } else {
            if !self.events.watched(txn.get(parent)?.bucket) {
                return Ok(Enqueued::NONE);
            }
            match (
                self.place_in(parent, name)?,
                self.place_in(newparent, newname)?,
            ) {
                (Some(from), Some(to)) => (from, to),
                _ => return Ok(Enqueued::NONE),
            }
        };
        let mut files = Vec::new();
        self.files_under(ino, "", &mut files)?;
        let mut n = Enqueued::NONE;
        for (file, rel) in files {
            let inode = self.getattr(file)?;
            let at = |p: &Place| Place {
                key: match p.key.as_str() {
                    "" => rel.trim_start_matches('/').to_string(),
                    key => format!("{key}{rel}"),
                },
                ..p.clone()
            };
            let etag = self.etag_of(&mut txn.batch, file, &inode)?;
            let copy = self.change("ObjectCreated:Copy", &at(&to), file, inode.size, etag, uid);
            n.add(self.queue(&mut txn.batch, copy)?);
            let delete = self.change(
                "ObjectRemoved:Delete",
                &at(&from),
                file,
                inode.size,
                String::new(),
                uid,
            );
            n.add(self.queue(&mut txn.batch, delete)?);
        }
        if self.getattr(ino)?.kind == Kind::File {
            self.events.remember(to.bucket_ino, ino, newparent, newname);
        }
        Ok(n)
    }

    /// Queues the Put of a handler call that changed `ino`'s data, with the content's MD5
    /// and omap as the call leaves them.
    pub(super) fn queue_call_put(
        &self,
        batch: &mut Batch<'_>,
        ino: Ino,
        place: Option<(Ino, &[u8])>,
        (size, mtime): (u64, Timestamp),
        (md5, metadata): (&str, Vec<(String, String)>),
        uid: u32,
    ) -> Result<Enqueued> {
        let bucket = self.getattr(ino)?.bucket;
        if !self.events.watched(bucket) {
            return Ok(Enqueued::NONE);
        }
        let place = match place {
            Some((parent, name)) => self.place_in(parent, name)?,
            None => self.place_of_file(ino, bucket)?,
        };
        let Some(place) = place else {
            return Ok(Enqueued::NONE);
        };
        put_etag(batch, ino, size, mtime, md5);
        let mut change = self.change("ObjectCreated:Put", &place, ino, size, md5.into(), uid);
        change.metadata = Some(metadata);
        self.queue(batch, change)
    }

    /// Runs a notification or background script (for the dispatcher), with `require` of
    /// installed packages and the handlers' limits.
    pub fn run_notify_script(
        &self,
        run: &crate::lua::NotifyRun<'_>,
        notifier: &mut dyn crate::lua::Notifier,
    ) -> std::result::Result<(), String> {
        self.engine
            .notify(run, notifier, &super::class::StoreModules(self))
    }

    /// Whether `ino`'s bucket has notifications (callers skip event work otherwise).
    pub(super) fn watches(&self, ino: Ino) -> Result<bool> {
        Ok(self.events.watched(self.getattr(ino)?.bucket))
    }

    /// Tells the dispatcher about committed events.
    pub(super) fn queued(&self, q: Enqueued) {
        if q.count > 0 {
            self.events.committed(q);
        }
    }

    fn change(
        &self,
        event: &'static str,
        place: &Place,
        ino: Ino,
        size: u64,
        etag: String,
        uid: u32,
    ) -> Change {
        Change {
            event,
            bucket: place.bucket.clone(),
            bucket_owner: place.bucket_owner,
            bucket_id: place.bucket_ino,
            key: place.key.clone(),
            ino,
            size,
            etag,
            uid,
            metadata: None,
            time: SystemTime::now(),
        }
    }

    /// Puts one queue entry per notification of the bucket that wants `change` (of object
    /// `change.ino`). The omap is read only if one wants it.
    fn queue(&self, batch: &mut Batch<'_>, mut change: Change) -> Result<Enqueued> {
        let settings = self.events.settings();
        let Some(list) = settings.buckets.get(&change.bucket) else {
            return Ok(Enqueued::NONE);
        };
        let mut wanted = Vec::new();
        for notification in list {
            if !notification.wants(change.event, &change.key)
                || !self.omap_matches(notification, &change)?
            {
                continue;
            }
            match settings.topics.get(&notification.topic) {
                Some(topic) => wanted.push((notification, topic)),
                None => tracing::error!(notification = %notification.id,
                    topic = %notification.topic, "notification names a missing topic; event not queued"),
            }
        }
        if !wanted.is_empty() && change.metadata.is_none() {
            change.metadata = Some(
                self.store
                    .omap_entries(change.ino)?
                    .into_iter()
                    .map(|(k, v)| lossy_pair(&k, &v))
                    .collect(),
            );
        }
        let mut queued = Enqueued::NONE;
        for &(notification, topic) in &wanted {
            let seq = self.events.next_seq(&self.store)?;
            let entry = events::entry(&change, notification, topic, seq, &self.events.store_id);
            batch.put_event(seq, entry.to_string().as_bytes());
            queued.add(Enqueued::one(seq));
        }
        Ok(queued)
    }

    /// Whether the changed object's omap holds the values `notification` filters on: the
    /// omap the change carries (a handler call's, not yet committed), else the stored one.
    fn omap_matches(&self, notification: &Notification, change: &Change) -> Result<bool> {
        if notification.omap.is_empty() {
            return Ok(true);
        }
        if let Some(metadata) = &change.metadata {
            return Ok(notification.omap_matches(|k| {
                metadata
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.as_bytes().to_vec())
            }));
        }
        let ino = change.ino;
        let mut failed = None;
        let matches = notification.omap_matches(|k| {
            self.store.omap_get(ino, k.as_bytes()).unwrap_or_else(|e| {
                failed.get_or_insert(e);
                None
            })
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(matches),
        }
    }

    /// The bucket and key of `name` in directory `parent` (not the root).
    fn place_in(&self, parent: Ino, name: &[u8]) -> Result<Option<Place>> {
        let mut parts: Vec<Vec<u8>> = vec![name.to_vec()];
        let mut cur = parent;
        let mut bucket = None;
        while cur != ROOT {
            // A damaged parent pointer could make a cycle: never walk forever.
            if parts.len() > 4096 {
                return Err(Error::Corrupt(format!(
                    "inode {parent}: no path to the root"
                )));
            }
            let dir = self.getattr(cur)?;
            parts.push(self.name_in(dir.parent, cur)?);
            cur = dir.parent;
            bucket = Some(dir); // the last one, whose parent is the root, is the bucket
        }
        let Some(bucket) = bucket else {
            return Ok(None);
        };
        let bucket_name = parts.pop().expect("the bucket's name");
        parts.reverse();
        let key = parts
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect::<Vec<_>>()
            .join("/");
        Ok(Some(Place {
            bucket: String::from_utf8_lossy(&bucket_name).into_owned(),
            bucket_ino: bucket.ino,
            bucket_owner: bucket.uid,
            key,
        }))
    }

    /// The bucket and key of file `ino`, found by its remembered name or a scan of its
    /// bucket.
    fn place_of_file(&self, ino: Ino, bucket: Ino) -> Result<Option<Place>> {
        let remembered = self.events.names.lock().get(&ino).cloned();
        if let Some((parent, name)) = remembered {
            if self.store.dentry(parent, &name)?.map(|d| d.ino) == Some(ino) {
                return self.place_in(parent, &name);
            }
        }
        match self.find_name(bucket, ino)? {
            Some((parent, name)) => {
                self.events.remember(bucket, ino, parent, &name);
                self.place_in(parent, &name)
            }
            None => Ok(None),
        }
    }

    /// The name of `child` in directory `parent` (a scan of the directory).
    fn name_in(&self, parent: Ino, child: Ino) -> Result<Vec<u8>> {
        let remembered = self.events.names.lock().get(&child).cloned();
        if let Some((p, name)) = remembered {
            if p == parent && self.store.dentry(p, &name)?.map(|d| d.ino) == Some(child) {
                return Ok(name);
            }
        }
        let name = self
            .store
            .dentries(parent)?
            .into_iter()
            .find(|(_, d)| d.ino == child)
            .map(|(n, _)| n)
            .ok_or_else(|| Error::Corrupt(format!("directory {child} has no name in {parent}")))?;
        let mut names = self.events.names.lock();
        if names.len() < MAX_NAMES {
            names.insert(child, (parent, name.clone()));
        }
        Ok(name)
    }

    /// Depth-first search of directory `dir` for a name of `ino`.
    fn find_name(&self, dir: Ino, ino: Ino) -> Result<Option<(Ino, Vec<u8>)>> {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for (name, entry) in self.store.dentries(d)? {
                if entry.ino == ino {
                    return Ok(Some((d, name)));
                }
                if entry.kind == Kind::Dir {
                    stack.push(entry.ino);
                }
            }
        }
        Ok(None)
    }

    /// Every file at or under `ino`, with its path relative to `ino` ("" for `ino` itself,
    /// "/a/b" below it).
    fn files_under(&self, ino: Ino, rel: &str, out: &mut Vec<(Ino, String)>) -> Result<()> {
        let inode = self.getattr(ino)?;
        match inode.kind {
            Kind::File => out.push((ino, rel.to_string())),
            Kind::Dir => {
                for (name, d) in self.store.dentries(ino)? {
                    let rel = format!("{rel}/{}", String::from_utf8_lossy(&name));
                    self.files_under(d.ino, &rel, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The MD5 of a file: the recorded one if the file has not changed since, else read and
    /// recorded in `batch`, so the next rename does not read it again.
    fn etag_of(
        &self,
        batch: &mut Batch<'_>,
        ino: Ino,
        inode: &crate::store::codec::Inode,
    ) -> Result<String> {
        if let Some(rec) = self.store.etag(ino)? {
            if let Some(etag) = parse_etag(&rec, inode.size, inode.mtime) {
                return Ok(etag);
            }
        }
        let etag = self.content_md5(ino, inode.size)?;
        put_etag(batch, ino, inode.size, inode.mtime, &etag);
        Ok(etag)
    }

    fn content_md5(&self, ino: Ino, size: u64) -> Result<String> {
        md5_of(size, |at, end| {
            super::object::read_chunks(at, end, |first, last| self.store.chunks(ino, first, last))
        })
    }
}

/// The hex MD5 (an S3 eTag) of `size` bytes that `read(at, end)` returns, in 1 MiB steps.
pub(super) fn md5_of(
    size: u64,
    mut read: impl FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<String> {
    let mut h = Md5::new();
    let mut at = 0;
    while at < size {
        let end = size.min(at + HASH_STEP);
        h.update(read(at, end)?);
        at = end;
    }
    Ok(hex(h.finalize().as_slice()))
}

/// An omap entry as event metadata (UTF-8, lossily).
pub(super) fn lossy_pair(k: &[u8], v: &[u8]) -> (String, String) {
    (
        String::from_utf8_lossy(k).into_owned(),
        String::from_utf8_lossy(v).into_owned(),
    )
}

/// `keys::ETAG` record: size, mtime and the hex digest.
fn put_etag(batch: &mut Batch<'_>, ino: Ino, size: u64, mtime: Timestamp, etag: &str) {
    batch.put_etag(
        ino,
        format!("{size} {} {} {etag}", mtime.sec, mtime.nsec).as_bytes(),
    );
}

fn parse_etag(rec: &[u8], size: u64, mtime: Timestamp) -> Option<String> {
    let text = std::str::from_utf8(rec).ok()?;
    let mut f = text.split(' ');
    let s: u64 = f.next()?.parse().ok()?;
    let sec: i64 = f.next()?.parse().ok()?;
    let nsec: u32 = f.next()?.parse().ok()?;
    let etag = f.next()?;
    (s == size && sec == mtime.sec && nsec == mtime.nsec).then(|| etag.to_string())
}
