//! The etcd engine's read cache: what this mount read from etcd or saw change through its
//! watch, so that reading a key again costs no round trip.
//!
//! Every entry knows the revision it is true as of. The watch delivers every change under the
//! filesystem's prefix, in revision order, and each one overwrites its key's entry; a read from
//! etcd (true as of its response's revision) and this process' own commits (true as of the
//! commit's revision) enter only where the cache knows nothing newer. A reader that raced a
//! change therefore never leaves an old value behind: either the change was seen first and the
//! old value is refused, or it comes after and overwrites it. `floor` refuses anything older
//! than a point where the cache forgot what it knew (it was cleared, or the watch lost changes).
//!
//! A cached value may still be a few milliseconds old (the watch's delay). That is harmless for
//! reads, and never reaches a commit unchecked. Each thread records the entries it is served
//! in its open scopes: the operation running on it (core's `transact`, one attempt) and its
//! open batches. A commit compares the versions of every entry its batch and its operation
//! were served, so a stale one makes it a conflict and the operation runs again on fresh
//! reads (a failed check answers with the checked keys' current values, which the cache
//! takes). A batch *apart* (a counter reservation inside an operation) compares only what it
//! recorded itself. After a commit, the scopes still open hold its new versions of what it
//! wrote: an operation is not in conflict with itself. Entries are served only while the
//! watch is connected and etcd answered within `TRUSTED_FOR`: a mount cut off from etcd stops
//! answering from memory within that time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long after etcd's last answer cached entries are still served.
const TRUSTED_FOR: Duration = Duration::from_secs(2);
/// Entries and bytes held before the cache starts over.
const MAX_ENTRIES: usize = 200_000;
const MAX_BYTES: usize = 64 << 20;
/// Entries one scope may record; past that its thread reads from etcd (a commit compares
/// each, and etcd takes at most 128 compares per transaction).
const MAX_HITS: usize = 64;

/// A key's value (None: absent) and version (its mod_revision; 0 when absent).
pub type Found = Option<(Vec<u8>, i64)>;

struct Entry {
    found: Found,
    /// The revision this is true as of.
    as_of: i64,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<Vec<u8>, Entry>,
    bytes: usize,
    /// Nothing older than this may enter.
    floor: i64,
    /// The newest revision anything entered at.
    newest: i64,
    /// Every change up to this revision has come through the watch.
    watched: i64,
}

pub struct Cache {
    /// Which cache a thread's hits belong to (a process may open several stores).
    id: u64,
    state: Mutex<State>,
    caught_up: Condvar,
    /// Set once a watch started: from then on what the cache learns is kept current.
    enabled: AtomicBool,
    /// Set while the watch follows changes as they happen.
    live: AtomicBool,
    /// When etcd last answered, in ms since `start`.
    heard: AtomicU64,
    start: Instant,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What a scope open on a thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One attempt of an operation.
    Operation,
    /// A batch of writes, part of the operation around it (if any).
    Batch,
    /// A batch apart from the operation around it.
    Apart,
}

/// A scope open on this thread, and the entries its thread was served since it opened.
struct Open {
    cache: u64,
    id: u64,
    scope: Scope,
    hits: Vec<(Vec<u8>, i64)>,
}

thread_local! {
    static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::default(),
            caught_up: Condvar::new(),
            enabled: AtomicBool::new(false),
            live: AtomicBool::new(false),
            heard: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    /// etcd answered just now.
    pub fn heard(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.heard.fetch_max(ms, Ordering::Relaxed);
    }

    fn trusted(&self) -> bool {
        let heard = Duration::from_millis(self.heard.load(Ordering::Relaxed));
        self.live.load(Ordering::Relaxed) && self.start.elapsed() < heard + TRUSTED_FOR
    }

    /// The watch (re)connected, following changes from revision `from` on. Until it says it
    /// caught up (`synced`), nothing is served.
    pub fn connected(&self, from: i64) {
        let mut s = self.state.lock();
        s.watched = s.watched.max(from - 1);
        if !self.enabled.swap(true, Ordering::Relaxed) {
            // A read answered before the watch began may miss changes it will not replay.
            s.floor = s.floor.max(from - 1);
        }
    }

    /// etcd reports the watch up to date, following changes as they happen: the cache may
    /// answer. (The report's revision is not taken as delivered: seen here on etcd 3.4.23, a
    /// report may run ahead of a change still on its way.)
    pub fn synced(&self) {
        self.live.store(true, Ordering::Relaxed);
    }

    /// The watch was lost: nothing is served until it is back.
    pub fn lost(&self) {
        self.live.store(false, Ordering::Relaxed);
    }

    /// The cached value of `key`, if the cache may answer; recorded in the thread's open
    /// scopes.
    pub fn hit(&self, key: &[u8]) -> Option<Found> {
        if !self.trusted() {
            return None;
        }
        OPEN.with(|open| {
            let mut open = open.borrow_mut();
            let mut mine = open.iter_mut().filter(|o| o.cache == self.id).peekable();
            if mine.peek().is_some_and(|o| o.hits.len() >= MAX_HITS) {
                return None; // the outermost scope holds the most
            }
            let found = self.state.lock().entries.get(key)?.found.clone();
            let version = found.as_ref().map_or(0, |(_, v)| *v);
            for o in mine {
                o.hits.push((key.to_vec(), version));
            }
            Some(found)
        })
    }

    /// Opens a scope on this thread: from now on, hits are recorded in it.
    pub fn open(&self, scope: Scope) -> u64 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        OPEN.with(|open| {
            open.borrow_mut().push(Open {
                cache: self.id,
                id,
                scope,
                hits: Vec::new(),
            })
        });
        id
    }

    /// Closes a scope (a batch committed or dropped, an operation ended).
    pub fn close(&self, id: u64) {
        OPEN.with(|open| open.borrow_mut().retain(|o| o.id != id));
    }

    /// What the commit of batch `id` must check: the entries it was served, and unless it is
    /// apart, those its operation was.
    pub fn served(&self, id: u64) -> Vec<(Vec<u8>, i64)> {
        OPEN.with(|open| {
            let open = open.borrow();
            let Some(at) = open.iter().position(|o| o.id == id) else {
                return Vec::new();
            };
            let mut out = open[at].hits.clone();
            if open[at].scope != Scope::Apart {
                let operation = open[..at]
                    .iter()
                    .rev()
                    .find(|o| o.cache == self.id && o.scope == Scope::Operation);
                out.extend(operation.into_iter().flat_map(|o| o.hits.iter().cloned()));
            }
            out
        })
    }

    /// A commit of this thread wrote `key` (its version now `version`; 0: deleted): the
    /// scopes still open were served the new one.
    pub fn wrote(&self, key: &[u8], version: i64) {
        OPEN.with(|open| {
            for o in open.borrow_mut().iter_mut().filter(|o| o.cache == self.id) {
                for hit in o.hits.iter_mut().filter(|(k, _)| k == key) {
                    hit.1 = version;
                }
            }
        })
    }

    /// A commit of this thread deleted the keys `from..to`.
    pub fn wrote_range(&self, from: &[u8], to: &[u8]) {
        OPEN.with(|open| {
            for o in open.borrow_mut().iter_mut().filter(|o| o.cache == self.id) {
                for hit in o.hits.iter_mut() {
                    if from <= hit.0.as_slice() && hit.0.as_slice() < to {
                        hit.1 = 0;
                    }
                }
            }
        })
    }

    /// Records what `key` holds as of revision `as_of`, unless the cache knows newer.
    pub fn learn(&self, key: &[u8], found: Found, as_of: i64) {
        self.learn_all(std::iter::once((key, found, as_of)));
    }

    /// `learn` for each change, all at once: a reader sees all of a commit's keys changed or
    /// none.
    pub fn learn_all<'k>(&self, changes: impl IntoIterator<Item = (&'k [u8], Found, i64)>) {
        if !self.enabled.load(Ordering::Relaxed) {
            return; // not watched: nothing would keep it current
        }
        let mut s = self.state.lock();
        for (key, found, as_of) in changes {
            learn(&mut s, key, found, as_of);
        }
        if s.entries.len() > MAX_ENTRIES || s.bytes > MAX_BYTES {
            start_over(&mut s);
        }
    }

    /// The watch delivered every change up to revision `rev`.
    pub fn watched(&self, rev: i64) {
        let mut s = self.state.lock();
        if rev > s.watched {
            s.watched = rev;
            self.caught_up.notify_all();
        }
    }

    /// Waits until the watch delivered revision `rev`, a change of one of this filesystem's
    /// keys (at most `wait`); if it does not in time, the cache starts over from `rev`, so
    /// that nothing older is served either way.
    pub fn catch_up(&self, rev: i64, wait: Duration) {
        let mut s = self.state.lock();
        let deadline = Instant::now() + wait;
        while s.watched < rev {
            if self.caught_up.wait_until(&mut s, deadline).timed_out() {
                if s.watched < rev {
                    start_over(&mut s);
                    s.floor = s.floor.max(rev);
                }
                return;
            }
        }
    }

    /// Drops what the cache holds of `key` (a commit of it had an unknown outcome).
    pub fn forget(&self, key: &[u8]) {
        remove(&mut self.state.lock(), key);
    }

    /// A commit at `rev` deleted the keys `from..to`: the cached ones are absent now. (A
    /// read of one the cache does not hold, answered before the commit, may still enter; the
    /// watch's delete of that key, at `rev`, overwrites it.)
    pub fn deleted_range(&self, from: &[u8], to: &[u8], rev: i64) {
        let mut s = self.state.lock();
        for k in held_in(&s, from, to) {
            learn(&mut s, &k, None, rev);
        }
    }

    /// Drops every key from `from` to `to` (a commit of unknown outcome deleted them).
    pub fn forget_range(&self, from: &[u8], to: &[u8]) {
        let mut s = self.state.lock();
        for k in held_in(&s, from, to) {
            remove(&mut s, &k);
        }
    }

    /// Forgets everything from before revision `rev`: changes up to it may have been missed
    /// (the watch resumes after a compaction at `rev`).
    pub fn clear(&self, rev: i64) {
        let mut s = self.state.lock();
        start_over(&mut s);
        s.floor = s.floor.max(rev);
    }
}

fn learn(s: &mut State, key: &[u8], found: Found, as_of: i64) {
    if as_of < s.floor || s.entries.get(key).is_some_and(|e| e.as_of >= as_of) {
        return;
    }
    s.newest = s.newest.max(as_of);
    s.bytes += size(key, &found);
    if let Some(old) = s.entries.insert(key.to_vec(), Entry { found, as_of }) {
        s.bytes -= size(key, &old.found);
    }
}

fn remove(s: &mut State, key: &[u8]) {
    if let Some(old) = s.entries.remove(key) {
        s.bytes -= size(key, &old.found);
    }
}

/// Bytes an entry holds.
fn size(key: &[u8], found: &Found) -> usize {
    key.len() + found.as_ref().map_or(0, |(v, _)| v.len())
}

/// The keys from `from` to `to` the cache holds.
fn held_in(s: &State, from: &[u8], to: &[u8]) -> Vec<Vec<u8>> {
    let range = s.entries.range::<[u8], _>((
        std::ops::Bound::Included(from),
        std::ops::Bound::Excluded(to),
    ));
    range.map(|(k, _)| k.clone()).collect()
}

fn start_over(s: &mut State) {
    s.entries.clear();
    s.bytes = 0;
    s.floor = s.floor.max(s.newest).max(s.watched);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Cache {
        let c = Cache::new();
        c.connected(1);
        c.synced();
        c.heard();
        c
    }

    fn value(c: &Cache, key: &[u8]) -> Option<Option<Vec<u8>>> {
        c.hit(key).map(|f| f.map(|(v, _)| v))
    }

    #[test]
    fn a_read_older_than_a_change_already_seen_does_not_enter() {
        let c = live();
        c.learn(b"k", Some((b"new".to_vec(), 7)), 7); // the watch saw revision 7
        c.learn(b"k", Some((b"old".to_vec(), 3)), 5); // a read answered as of revision 5
        assert_eq!(value(&c, b"k"), Some(Some(b"new".to_vec())));
        c.learn(b"k", None, 9); // deleted at 9
        assert_eq!(value(&c, b"k"), Some(None));
    }

    #[test]
    fn a_commit_checks_what_its_batch_and_operation_were_served() {
        let c = live();
        c.learn(b"a", Some((b"1".to_vec(), 4)), 4);
        c.learn(b"b", None, 4);
        c.learn(b"n", Some((b"7".to_vec(), 3)), 4);
        assert!(
            value(&c, b"a").is_some(),
            "served outside any scope, recorded nowhere"
        );
        let op = c.open(Scope::Operation);
        assert!(value(&c, b"a").is_some());
        let batch = c.open(Scope::Batch);
        assert!(value(&c, b"b").is_some());
        assert!(value(&c, b"c").is_none(), "an unknown key is no hit");
        let apart = c.open(Scope::Apart);
        assert!(value(&c, b"n").is_some());
        assert_eq!(c.served(apart), vec![(b"n".to_vec(), 3)]);
        c.wrote(b"n", 9); // the reservation committed
        c.close(apart);
        let served = c.served(batch);
        assert_eq!(
            served,
            vec![
                (b"b".to_vec(), 0),
                (b"n".to_vec(), 9),
                (b"a".to_vec(), 4),
                (b"b".to_vec(), 0),
                (b"n".to_vec(), 9),
            ]
        );
        c.close(batch);
        c.close(op);
        assert!(c.served(batch).is_empty());
    }

    #[test]
    fn nothing_is_served_without_a_live_watch_or_past_the_limit() {
        let c = Cache::new();
        c.learn(b"a", None, 4);
        c.connected(1);
        c.heard();
        assert!(c.hit(b"a").is_none(), "not caught up yet");
        c.synced();
        assert!(c.hit(b"a").is_none(), "learnt before the watch: not kept");
        c.learn(b"a", None, 4);
        assert!(c.hit(b"a").is_some());
        c.lost();
        assert!(c.hit(b"a").is_none(), "watch lost");
        c.synced();
        let batch = c.open(Scope::Batch);
        for _ in 0..MAX_HITS {
            assert!(c.hit(b"a").is_some());
        }
        assert!(c.hit(b"a").is_none(), "a commit can check only so many");
        assert_eq!(c.served(batch).len(), MAX_HITS);
        c.close(batch);
        assert!(c.hit(b"a").is_some());
    }

    #[test]
    fn a_deleted_range_is_absent_and_changes_elsewhere_still_enter() {
        let c = live();
        c.learn(b"a1", Some((b"x".to_vec(), 2)), 3);
        c.learn(b"b", Some((b"old".to_vec(), 2)), 3);
        c.deleted_range(b"a", b"a\xff", 10);
        assert_eq!(value(&c, b"a1"), Some(None));
        c.learn(b"a1", Some((b"x".to_vec(), 2)), 8); // a read from before the delete
        assert_eq!(value(&c, b"a1"), Some(None));
        c.learn(b"b", Some((b"new".to_vec(), 9)), 9); // another mount's change, seen late
        assert_eq!(value(&c, b"b"), Some(Some(b"new".to_vec())));
        c.forget_range(b"a", b"a\xff");
        assert!(c.hit(b"a1").is_none());
    }

    #[test]
    fn catching_up_in_vain_starts_over() {
        let c = live();
        c.learn(b"a", None, 3);
        c.watched(4);
        c.catch_up(4, Duration::ZERO);
        assert!(c.hit(b"a").is_some(), "already caught up");
        c.catch_up(6, Duration::from_millis(10));
        assert!(c.hit(b"a").is_none());
        c.learn(b"a", None, 5);
        assert!(c.hit(b"a").is_none(), "older than what was waited for");
        c.learn(b"a", None, 7);
        c.synced(); // a progress report is not a change delivered
        c.catch_up(8, Duration::from_millis(10));
        assert!(c.hit(b"a").is_none());
    }
}
