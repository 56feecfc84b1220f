//! The shared metadata engine: `Meta` on etcd (v3 API, 3.4 or later).
//!
//! Keys are `/<filesystem>/<family>/<key bytes>`; a key's version is its `mod_revision`. A
//! commit is one `Txn` whose compares are the checked keys' mod_revisions (0: absent) and
//! whose success branch holds the writes. etcd refuses a transaction that writes one key twice
//! or puts a key inside a range it deletes, so a batch is first reduced to what it leaves:
//! the last write of each key, and range deletes split around the keys put inside them.
//!
//! Calls come from FUSE threads, which are not async: each blocks on a runtime owned by this
//! engine, and waits at most `timeout` (then EIO with a message naming etcd): a lost etcd
//! never hangs the kernel.
//!
//! Once the store is watched (a mount), point reads go through a cache the watch keeps
//! current (`cache.rs`); a commit also compares the versions of every cached value its thread
//! was served, so a value the watch had not yet updated makes a conflict, never a lost update.

mod cache;
mod members;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use parking_lot::Mutex;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::meta::{Changed, Each, Found, Meta, Outcome, Version, Writes};
use super::schema::Cf;
use crate::error::{Error, Result};

/// The wait before a failed read is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Keys per page of a scan, and reads per transaction of a `multi_get`.
const PAGE: i64 = 512;
const GETS_PER_TXN: usize = 64;

/// Where an etcd filesystem lives and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    /// The filesystem's name: its keys are under `/<name>/`.
    pub name: String,
    pub user: Option<(String, String)>,
    /// PEM files: the CA, and this client's certificate and key (all or none of the last two).
    pub ca: Option<String>,
    pub cert: Option<(String, String)>,
    /// The longest wait for any one request.
    pub timeout: Duration,
}

pub struct Etcd {
    rt: tokio::runtime::Runtime,
    client: Client,
    prefix: Vec<u8>,
    timeout: Duration,
    describe: String,
    /// This process' own commits: the watch's events for them are not news.
    own: Arc<Own>,
    /// This process' claim on the leadership, once asked for.
    leadership: std::sync::OnceLock<Arc<Leadership>>,
    /// The leases this process holds (session, leadership), revoked at a clean shutdown so
    /// that other mounts see it gone at once; set then, it stops their renewal tasks.
    leases: Arc<Leases>,
    cache: Arc<cache::Cache>,
    /// Requests sent (`Meta::requests`).
    requests: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Leases {
    held: Mutex<Vec<i64>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl Leases {
    /// Remembers a new lease; only the latest few can still be alive.
    fn hold(&self, lease: i64) {
        let mut held = self.held.lock();
        if held.len() >= 4 {
            held.remove(0);
        }
        held.push(lease);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The longest wait for the watch to deliver a revision a fresh read saw.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// The longest wait for one lease revocation at shutdown.
const REVOKE_WAIT: Duration = Duration::from_secs(1);

/// Seconds a leader's lease lives without renewal; it renews every third of that.
const LEASE_TTL: i64 = 10;

/// The leader key `/<name>/leader`, held under a lease: the process holding it runs the
/// dispatcher and background work. Another takes over when its lease expires.
#[derive(Default)]
struct Leadership {
    /// When the lease was last renewed while holding the key (None: not the leader).
    held_at: Mutex<Option<std::time::Instant>>,
}

impl Leadership {
    fn holds(&self) -> bool {
        // Trusted only well inside the lease: a leader cut off from etcd stops leading
        // before its lease expires and another process can take over.
        let margin = Duration::from_secs(LEASE_TTL as u64 * 2 / 3);
        self.held_at.lock().is_some_and(|t| t.elapsed() < margin)
    }

    async fn campaign(
        self: Arc<Self>,
        mut client: Client,
        key: Vec<u8>,
        me: Vec<u8>,
        leases: Arc<Leases>,
    ) {
        while !leases.stopping() {
            if let Err(e) = self.term(&mut client, &key, &me, &leases).await {
                tracing::warn!(error = %e, "leadership lease lost; campaigning again");
            }
            *self.held_at.lock() = None;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One lease: claims the key whenever it is free, renews while it lives.
    async fn term(
        &self,
        client: &mut Client,
        key: &[u8],
        me: &[u8],
        leases: &Leases,
    ) -> std::result::Result<(), etcd_client::Error> {
        let lease = client.lease_grant(LEASE_TTL, None).await?.id();
        leases.hold(lease);
        let (mut keeper, mut replies) = client.lease_keep_alive(lease).await?;
        while !leases.stopping() {
            let claim = Txn::new()
                .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.to_vec(),
                    me.to_vec(),
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.to_vec(), None)]);
            let resp = client.txn(claim).await?;
            let mine = resp.succeeded()
                || resp.op_responses().iter().any(|op| {
                    matches!(op, TxnOpResponse::Get(g) if g.kvs().first().is_some_and(|kv| kv.value() == me))
                });
            keeper.keep_alive().await?;
            match replies.message().await? {
                Some(r) if r.ttl() > 0 => {}
                _ => return Ok(()), // expired
            }
            *self.held_at.lock() = mine.then(std::time::Instant::now);
            tokio::time::sleep(Duration::from_secs(LEASE_TTL as u64 / 3)).await;
        }
        Ok(())
    }
}

impl Etcd {
    /// Connects, and checks that etcd answers (within the timeout).
    pub fn connect(cfg: &EtcdConfig) -> Result<Etcd> {
        let describe = format!("etcd://{}/{}", cfg.endpoints.join(","), cfg.name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lunafs-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the etcd client runtime", e))?;
        let scheme = if cfg.ca.is_some() { "https" } else { "http" };
        let urls: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect();
        let opts = connect_options(cfg)?;
        let (client, members) = rt
            .block_on(async {
                tokio::time::timeout(cfg.timeout, members::Members::connect(urls, opts)).await
            })
            .map_err(|_| unreachable(&describe, cfg.timeout))?
            .map_err(|e| Error::Backend(format!("{describe}: {e}")))?;
        if let Some(members) = members {
            rt.spawn(members.follow(client.clone()));
        }
        let etcd = Etcd {
            rt,
            client,
            prefix: format!("/{}/", cfg.name).into_bytes(),
            timeout: cfg.timeout,
            describe,
            own: Arc::default(),
            leadership: Default::default(),
            leases: Arc::default(),
            cache: Arc::new(cache::Cache::new()),
            requests: Default::default(),
        };
        // The client connects lazily: a first read says whether anyone answers.
        etcd.get(Cf::Meta, b"")?;
        Ok(etcd)
    }

    /// Ends this process' session and leadership at once (a clean shutdown, or the store
    /// dropped), so that other mounts need not wait for the leases to expire.
    fn release_leases(&self) {
        self.leases
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let held = std::mem::take(&mut *self.leases.held.lock());
        for lease in held {
            let mut client = self.client.clone();
            // Best effort, briefly (an etcd out of reach must not hold up the exit): an
            // unrevoked lease expires on its own within LEASE_TTL.
            let revoke =
                async { tokio::time::timeout(REVOKE_WAIT, client.lease_revoke(lease)).await };
            if let Ok(Err(e)) = self.rt.block_on(revoke) {
                tracing::debug!(error = %e, "revoking a lease at shutdown");
            }
        }
    }

    /// `/<name>/sessions/<id>`: present while the session's process renews its lease.
    fn session_key(&self, id: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(b"sessions/");
        k.extend_from_slice(id);
        k
    }

    fn kv(&self) -> KvClient {
        self.client.kv_client()
    }

    fn key(&self, cf: Cf, key: &[u8]) -> Vec<u8> {
        let mut k = self.family(cf);
        k.extend_from_slice(key);
        k
    }

    /// `/<name>/<family>/`, the start of a family's keys.
    fn family(&self, cf: Cf) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(cf.name().as_bytes());
        k.push(b'/');
        k
    }

    /// One past every key of the family.
    fn family_end(&self, cf: Cf) -> Vec<u8> {
        past(self.family(cf))
    }

    fn batch(&self, scope: cache::Scope) -> Box<dyn Writes + '_> {
        Box::new(EtcdWrites {
            etcd: self,
            ops: Vec::new(),
            checks: BTreeMap::new(),
            batch: self.cache.open(scope),
        })
    }

    /// Reads `key` from etcd (not the cache), and caches what it found.
    fn fetch(&self, key: &[u8]) -> Result<cache::Found> {
        let resp = self.read("get", |mut kv| {
            let key = key.to_vec();
            async move { kv.get(key, None).await }
        })?;
        let found = found(resp.kvs().first());
        self.cache
            .learn(key, found.clone(), revision(resp.header()));
        Ok(found)
    }

    /// Runs a read, again after any failure (a member down, a leader election) until the
    /// timeout: reads change nothing, so repeating one is always safe. Writes are not
    /// repeated (`run`): a commit whose answer was lost may have happened.
    fn read<T, Fut>(&self, what: &str, attempt: impl Fn(KvClient) -> Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reads = async {
            loop {
                match attempt(self.kv()).await {
                    Ok(v) => return Ok(v),
                    Err(e) if tokio::time::Instant::now() + RETRY_PAUSE >= deadline => {
                        return Err(e)
                    }
                    Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
        };
        self.run(what, reads)
    }

    /// Runs one request, waiting at most the timeout.
    fn run<T>(
        &self,
        what: &str,
        f: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, f).await })
        {
            Ok(Ok(v)) => {
                self.cache.heard();
                Ok(v)
            }
            Ok(Err(e)) => Err(Error::Backend(format!("{} ({what}): {e}", self.describe))),
            Err(_) => Err(unreachable(
                &format!("{} ({what})", self.describe),
                self.timeout,
            )),
        }
    }
}

/// What a read found of one key, as the cache keeps it.
fn found(kv: Option<&etcd_client::KeyValue>) -> cache::Found {
    kv.map(|kv| (kv.value().to_vec(), kv.mod_revision()))
}

/// The revision a response is true as of.
fn revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

/// One past every key under `prefix`, which ends in `/` (`/` + 1 is `0`).
fn past(mut prefix: Vec<u8>) -> Vec<u8> {
    if let Some(last) = prefix.last_mut() {
        *last += 1;
    }
    prefix
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "?".into(), |h| h.trim().to_owned())
}

fn unreachable(what: &str, timeout: Duration) -> Error {
    Error::Backend(format!(
        "{what}: no answer within {} s",
        timeout.as_secs_f32()
    ))
}

fn connect_options(cfg: &EtcdConfig) -> Result<ConnectOptions> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.timeout)
        .with_timeout(cfg.timeout)
        .with_keep_alive(Duration::from_secs(5), cfg.timeout);
    if let Some((user, password)) = &cfg.user {
        opts = opts
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(ca) = &cfg.ca {
        let read =
            |path: &str| std::fs::read(path).map_err(|e| Error::io(format!("reading {path}"), e));
        let mut tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &cfg.cert {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

impl Meta for Etcd {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>> {
        let k = self.key(cf, key);
        let found = match self.cache.hit(&k) {
            Some(found) => found,
            None => self.fetch(&k)?,
        };
        Ok(found.map(|(v, r)| (v, r as Version)))
    }

    fn get_latest(&self, cf: Cf, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>> {
        let found = self.fetch(&self.key(cf, key))?;
        // Everything the key's owner changed with it is at or before its revision: once the
        // watch is there, cached reads of those keys are at least as new.
        if let Some((_, rev)) = &found {
            self.cache.catch_up(*rev, self.timeout.min(CATCH_UP_WAIT));
        }
        Ok(found.map(|(v, r)| (v, r as Version)))
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]], each: &mut Found<'_>) -> Result<()> {
        let full: Vec<Vec<u8>> = keys.iter().map(|k| self.key(cf, k)).collect();
        let mut missed = Vec::new();
        for (i, k) in full.iter().enumerate() {
            match self.cache.hit(k) {
                Some(found) => each(i, found.as_ref().map(|(v, _)| v.as_slice()))?,
                None => missed.push(i),
            }
        }
        for group in missed.chunks(GETS_PER_TXN) {
            let ops: Vec<TxnOp> = group
                .iter()
                .map(|&i| TxnOp::get(full[i].clone(), None))
                .collect();
            let resp = self.read("multi-get", |mut kv| {
                let txn = Txn::new().and_then(ops.clone());
                async move { kv.txn(txn).await }
            })?;
            let rev = revision(resp.header());
            for (&i, op) in group.iter().zip(resp.op_responses()) {
                let kv = match &op {
                    TxnOpResponse::Get(g) => g.kvs().first(),
                    _ => None,
                };
                each(i, kv.map(|kv| kv.value()))?;
                self.cache.learn(&full[i], found(kv), rev);
            }
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, from: &[u8], to: Option<&[u8]>, each: &mut Each<'_>) -> Result<()> {
        let family = self.family(cf);
        let end = to.map_or_else(|| self.family_end(cf), |to| self.key(cf, to));
        let mut start = self.key(cf, from);
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            let resp = self.read("scan", |mut kv| {
                let (start, opts) = (start.clone(), opts.clone());
                async move { kv.get(start, Some(opts)).await }
            })?;
            for item in resp.kvs() {
                if !each(&item.key()[family.len()..], item.value())? {
                    return Ok(());
                }
            }
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>> {
        let family = self.family(cf);
        let opts = GetOptions::new()
            .with_range(self.family_end(cf))
            .with_limit(1)
            .with_keys_only()
            .with_sort(SortTarget::Key, SortOrder::Descend);
        let resp = self.read("last key", |mut kv| {
            let (family, opts) = (family.clone(), opts.clone());
            async move { kv.get(family, Some(opts)).await }
        })?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| kv.key()[family.len()..].to_vec()))
    }

    fn writes(&self) -> Box<dyn Writes + '_> {
        self.batch(cache::Scope::Batch)
    }

    fn writes_apart(&self) -> Box<dyn Writes + '_> {
        self.batch(cache::Scope::Apart)
    }

    fn begin_operation(&self) -> u64 {
        self.cache.open(cache::Scope::Operation)
    }

    fn end_operation(&self, operation: u64) {
        self.cache.close(operation);
    }

    fn sync(&self) -> Result<()> {
        // An acknowledged etcd commit is already on a quorum's disks.
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.release_leases();
        Ok(())
    }

    fn approximate_size(&self) -> u64 {
        let mut m = self.client.maintenance_client();
        self.run("status", m.status())
            .map_or(0, |s| s.db_size().max(0) as u64)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn register_session(&self, id: &[u8]) -> Result<()> {
        let key = self.session_key(id);
        let mut client = self.client.clone();
        let lease = self
            .run("session lease", client.lease_grant(LEASE_TTL, None))?
            .id();
        let put = client.put(
            key.clone(),
            hostname(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        );
        self.run("session", put)?;
        self.leases.hold(lease);
        self.rt.spawn(keep_session(
            self.client.clone(),
            key,
            lease,
            self.leases.clone(),
        ));
        Ok(())
    }

    fn other_sessions(&self, own: &[u8]) -> Result<usize> {
        let from = self.session_key(b"");
        let to = past(from.clone());
        let own = self.session_key(own);
        let resp = self.read("sessions", |mut kv| {
            let (from, opts) = (
                from.clone(),
                GetOptions::new().with_range(to.clone()).with_keys_only(),
            );
            async move { kv.get(from, Some(opts)).await }
        })?;
        Ok(resp
            .kvs()
            .iter()
            .filter(|kv| kv.key() != own.as_slice())
            .count())
    }

    fn session_alive(&self, id: &[u8]) -> Result<bool> {
        let key = self.session_key(id);
        let resp = self.read("session", |mut kv| {
            let key = key.clone();
            async move { kv.get(key, None).await }
        })?;
        Ok(!resp.kvs().is_empty())
    }

    fn leads(&self) -> bool {
        let l = self.leadership.get_or_init(|| {
            let l = Arc::new(Leadership::default());
            let mut key = self.prefix.clone();
            key.extend_from_slice(b"leader");
            let me = format!("{}@{}", std::process::id(), hostname()).into_bytes();
            let leases = self.leases.clone();
            self.rt
                .spawn(l.clone().campaign(self.client.clone(), key, me, leases));
            l
        });
        l.holds()
    }

    fn watch(&self, changed: Arc<Changed>) -> Result<()> {
        let mut kv = self.kv();
        let now = self.run("revision", kv.get(self.prefix.clone(), None))?;
        let from = now.header().map_or(0, |h| h.revision()) + 1;
        // Changes go to a thread of their own: what they trigger (kernel invalidations) may
        // wait on FUSE requests, which may wait on this runtime.
        let (tx, rx) = mpsc::channel::<Option<(Cf, Vec<u8>)>>();
        std::thread::Builder::new()
            .name("lunafs-watch".into())
            .spawn(move || {
                for change in rx {
                    changed(change.as_ref().map(|(cf, k)| (*cf, k.as_slice())));
                }
            })
            .map_err(|e| Error::io("starting the watch thread", e))?;
        let watcher = Watcher {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            own: self.own.clone(),
            cache: self.cache.clone(),
            tx,
        };
        self.rt.spawn(watcher.run(from));
        Ok(())
    }
}

/// Renews a session's lease for the life of the process; if it expired anyway (etcd was out
/// of reach longer than its TTL), registers the session again under a new one.
async fn keep_session(mut client: Client, key: Vec<u8>, mut lease: i64, leases: Arc<Leases>) {
    loop {
        if leases.stopping() {
            return;
        }
        let renewed = async {
            let (mut keeper, mut replies) = client.lease_keep_alive(lease).await?;
            loop {
                keeper.keep_alive().await?;
                match replies.message().await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Ok::<(), etcd_client::Error>(()),
                }
                tokio::time::sleep(Duration::from_secs(LEASE_TTL as u64 / 3)).await;
            }
        };
        if let Err(e) = renewed.await {
            tracing::warn!(error = %e, "renewing the session lease failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tracing::warn!("the session lease expired; registering the session again");
        let again = async {
            let id = client.lease_grant(LEASE_TTL, None).await?.id();
            let opts = etcd_client::PutOptions::new().with_lease(id);
            client.put(key.clone(), hostname(), Some(opts)).await?;
            Ok::<i64, etcd_client::Error>(id)
        };
        match again.await {
            Ok(id) => {
                leases.hold(id);
                lease = id
            }
            Err(e) => {
                tracing::warn!(error = %e, "registering the session failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.release_leases();
    }
}

/// The longest the watch waits for unanswered commits of this process before it takes a
/// change for another process' (then it is passed on: a needless invalidation at worst).
const OWN_WAIT: Duration = Duration::from_secs(1);

/// This process' commits, as the watch must tell them from other processes' changes. The
/// watch may deliver a commit before the commit's answer (which names its revision) has been
/// read, so a change at a revision not known as one of ours waits for the commits that were
/// in flight when it arrived. Taking an own change for another's would make this mount drop
/// its caches for it (the global table's count, then counted again: a scan per script write).
#[derive(Default)]
struct Own {
    state: Mutex<OwnState>,
    answered: tokio::sync::Notify,
}

#[derive(Default)]
struct OwnState {
    /// Revisions of answered commits the watch has not passed yet.
    revs: BTreeSet<i64>,
    /// Commits sent and not answered, by number.
    sent: BTreeSet<u64>,
    next: u64,
    /// Commits up to this number are no longer waited for: one the watch waited `OWN_WAIT`
    /// for (etcd stalled under it) does not hold up every later change too.
    given_up: u64,
}

/// A commit in flight; says its revision (or none) to `Own` when dropped.
struct Sending<'a> {
    own: &'a Own,
    id: u64,
    rev: Option<i64>,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut s = self.own.state.lock();
        s.sent.remove(&self.id);
        s.revs.extend(self.rev);
        drop(s);
        self.own.answered.notify_waiters();
    }
}

impl Own {
    fn sending(&self) -> Sending<'_> {
        let mut s = self.state.lock();
        s.next += 1;
        let id = s.next;
        s.sent.insert(id);
        Sending {
            own: self,
            id,
            rev: None,
        }
    }

    /// Whether revision `rev` (the watch's next, in order) was made by this process.
    async fn is_own(&self, rev: i64) -> bool {
        let deadline = tokio::time::Instant::now() + OWN_WAIT;
        let mut sent_before = None;
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            {
                let mut s = self.state.lock();
                while s.revs.first().is_some_and(|&r| r < rev) {
                    s.revs.pop_first();
                }
                if s.revs.contains(&rev) {
                    return true;
                }
                let last = *sent_before.get_or_insert(s.next);
                if s.sent.range(s.given_up + 1..=last).next().is_none() {
                    return false;
                }
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                let mut s = self.state.lock();
                s.given_up = s.given_up.max(sent_before.unwrap_or(0));
                return false;
            }
        }
    }
}

/// Follows every change under the filesystem's prefix, from a revision on, across
/// reconnections: keeps the cache current, and tells the watch thread of the changes other
/// processes made.
struct Watcher {
    client: Client,
    prefix: Vec<u8>,
    own: Arc<Own>,
    cache: Arc<cache::Cache>,
    tx: mpsc::Sender<Option<(Cf, Vec<u8>)>>,
}

/// How often the watch asks etcd how far it is: the answer tells the cache that it is caught
/// up, and that etcd is still there when nothing changes.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Watcher {
    async fn run(self, mut from: i64) {
        loop {
            let followed = self.follow(&mut from).await;
            self.cache.lost();
            match followed {
                Ok(()) => return, // the watch thread is gone: the store was dropped
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch lost; resuming in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Ok when nobody listens any more; Err to reconnect.
    async fn follow(&self, from: &mut i64) -> std::result::Result<(), String> {
        let opts = WatchOptions::new().with_prefix().with_start_revision(*from);
        let mut client = self.client.clone();
        let (mut asks, mut stream) = client
            .watch(self.prefix.clone(), Some(opts))
            .await
            .map_err(|e| e.to_string())?
            .split();
        self.cache.connected(*from);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = tick.tick() => {
                    asks.request_progress().await.map_err(|e| e.to_string())?;
                    continue;
                }
            };
            let Some(resp) = message.map_err(|e| e.to_string())? else {
                return Err("watch stream ended".into());
            };
            self.cache.heard();
            if resp.canceled() {
                // Compacted past where we were: what happened in between is unknown.
                if resp.compact_revision() > 0 {
                    *from = resp.compact_revision();
                    self.cache.clear(resp.compact_revision());
                    if self.tx.send(None).is_err() {
                        return Ok(());
                    }
                }
                return Err(format!("watch canceled: {}", resp.cancel_reason()));
            }
            if resp.events().is_empty() {
                if !resp.created() {
                    // A progress report: every change up to its revision was delivered.
                    self.cache.synced();
                }
                continue;
            }
            if !self.deliver(resp.events(), from).await {
                return Ok(());
            }
        }
    }

    /// Applies changes to the cache and passes on other processes' ones; false when nobody
    /// listens any more.
    async fn deliver(&self, events: &[etcd_client::Event], from: &mut i64) -> bool {
        let kvs = || events.iter().filter_map(|e| Some((e, e.kv()?)));
        self.cache.learn_all(kvs().map(|(event, kv)| {
            let rev = kv.mod_revision();
            let found = match event.event_type() {
                etcd_client::EventType::Put => Some((kv.value().to_vec(), rev)),
                etcd_client::EventType::Delete => None,
            };
            (kv.key(), found, rev)
        }));
        for (_, kv) in kvs() {
            let rev = kv.mod_revision();
            *from = rev + 1;
            if self.own.is_own(rev).await {
                continue;
            }
            if let Some(change) = self.decode(kv.key()) {
                if self.tx.send(Some(change)).is_err() {
                    return false;
                }
            }
        }
        self.cache.watched(*from - 1);
        true
    }

    fn decode(&self, key: &[u8]) -> Option<(Cf, Vec<u8>)> {
        let rest = key.strip_prefix(self.prefix.as_slice())?;
        let slash = rest.iter().position(|&b| b == b'/')?;
        let cf = Cf::from_name(std::str::from_utf8(&rest[..slash]).ok()?)?;
        Some((cf, rest[slash + 1..].to_vec()))
    }
}

enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl Op {
    /// A read of what this op writes (a count, for a range).
    fn look(&self) -> TxnOp {
        match self {
            Op::Put(k, _) | Op::Delete(k) => TxnOp::get(k.clone(), None),
            Op::DeleteRange(from, to) => TxnOp::get(
                from.clone(),
                Some(GetOptions::new().with_range(to.clone()).with_count_only()),
            ),
        }
    }

    fn txn(&self) -> TxnOp {
        match self {
            Op::Put(k, v) => TxnOp::put(k.clone(), v.clone(), None),
            Op::Delete(k) => TxnOp::delete(k.clone(), None),
            Op::DeleteRange(from, to) => TxnOp::delete(
                from.clone(),
                Some(DeleteOptions::new().with_range(to.clone())),
            ),
        }
    }
}

struct EtcdWrites<'a> {
    etcd: &'a Etcd,
    ops: Vec<Op>,
    checks: BTreeMap<Vec<u8>, Version>,
    /// This batch in the cache: which cached values its thread was served meanwhile.
    batch: u64,
}

impl Writes for EtcdWrites<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.ops
            .push(Op::Put(self.etcd.key(cf, key), value.to_vec()));
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.ops.push(Op::Delete(self.etcd.key(cf, key)));
    }

    fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        let (from, to) = (self.etcd.key(cf, from), self.etcd.key(cf, to));
        if from < to {
            self.ops.push(Op::DeleteRange(from, to));
        }
    }

    fn check(&mut self, cf: Cf, key: &[u8], version: Version) {
        self.checks.insert(self.etcd.key(cf, key), version);
    }

    fn commit(mut self: Box<Self>) -> Result<Outcome> {
        let cache = &self.etcd.cache;
        // Cached values read meanwhile are checked too: one the watch had not yet updated
        // makes a conflict rather than a write based on it.
        for (k, v) in cache.served(self.batch) {
            let v = v as Version;
            if *self.checks.entry(k).or_insert(v) != v {
                // Served two versions of one key: what was read is not one state.
                return Ok(Outcome::Conflict);
            }
        }
        let compares: Vec<Compare> = self
            .checks
            .iter()
            .map(|(k, &v)| Compare::mod_revision(k.clone(), CompareOp::Equal, v as i64))
            .collect();
        let ops = reduce(std::mem::take(&mut self.ops));
        if ops.is_empty() && compares.is_empty() {
            return Ok(Outcome::Done);
        }
        // A failed check answers with what the checked keys hold now: the cache takes it, so
        // the operation's next attempt reads it at once (waiting for the watch, it would read
        // late and be likelier to lose the race again).
        let now: Vec<TxnOp> = self
            .checks
            .keys()
            .map(|k| TxnOp::get(k.clone(), None))
            .collect();
        let mut sending = self.etcd.own.sending();
        let resp = match self.etcd.run("commit", self.etcd.send(compares, &ops, now)) {
            Ok(Sent::Answered(resp)) => resp,
            Ok(Sent::Happened(rev)) => {
                sending.rev = Some(rev);
                remember(cache, &ops, rev);
                return Ok(Outcome::Done);
            }
            Err(e) => {
                // It may have happened or not: the watch will tell.
                forget(cache, &ops);
                return Err(e);
            }
        };
        let rev = revision(resp.header());
        if !resp.succeeded() {
            let found: Vec<cache::Found> = resp
                .op_responses()
                .into_iter()
                .map(|op| match op {
                    TxnOpResponse::Get(g) => found(g.kvs().first()),
                    _ => None,
                })
                .collect();
            let keys = self.checks.keys().map(Vec::as_slice);
            cache.learn_all(keys.zip(found).map(|(k, f)| (k, f, rev)));
            return Ok(Outcome::Conflict);
        }
        // A commit that writes nothing makes no revision of its own.
        if !ops.is_empty() {
            sending.rev = Some(rev);
            remember(cache, &ops, rev);
        }
        Ok(Outcome::Done)
    }
}

/// What became of a commit sent.
enum Sent {
    /// etcd answered it.
    Answered(etcd_client::TxnResponse),
    /// Its first answer was lost and a second sending found its writes in place: it happened,
    /// at this revision.
    Happened(i64),
}

impl Etcd {
    /// Sends a commit. When its answer is lost (the member died, the leader changed) it may
    /// or may not have happened, so it is sent again until one answers, with reads of what it
    /// writes for when its compares now fail: finding every write in place means the first
    /// sending happened (Raft applies an old leader's entry before any later one, or never).
    /// Sending again is safe where the compares still hold: then the first never happened, or
    /// it wrote only keys it did not check, which get the same values again (were one of them
    /// written by another mount in between, ours lands on top, as a later blind write would).
    async fn send(
        &self,
        compares: Vec<Compare>,
        ops: &[Op],
        now: Vec<TxnOp>,
    ) -> std::result::Result<Sent, etcd_client::Error> {
        let txn = |or_else: Vec<TxnOp>| {
            Txn::new()
                .when(compares.clone())
                .and_then(ops.iter().map(Op::txn).collect::<Vec<_>>())
                .or_else(or_else)
        };
        match self.kv().txn(txn(now.clone())).await {
            Err(e) if answer_lost(&e) => {
                tracing::info!(error = %e, "a commit's answer was lost; sending it again")
            }
            answered => return answered.map(Sent::Answered),
        }
        let checked = now.len();
        let looks: Vec<TxnOp> = now.into_iter().chain(ops.iter().map(Op::look)).collect();
        loop {
            tokio::time::sleep(RETRY_PAUSE).await;
            match self.kv().txn(txn(looks.clone())).await {
                Ok(r) if !r.succeeded() => {
                    return Ok(match in_place(&r, ops, checked) {
                        Some(rev) => Sent::Happened(rev),
                        None => Sent::Answered(r),
                    })
                }
                Err(e) if answer_lost(&e) => continue,
                answered => return answered.map(Sent::Answered),
            }
        }
    }
}

/// Whether a request's failure leaves its fate unknown (sent, no answer) rather than refused.
fn answer_lost(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ),
        _ => false,
    }
}

/// The revision at which `ops` were written, if the reads after the first `skip` answers of
/// a failed commit find every one in place.
fn in_place(resp: &etcd_client::TxnResponse, ops: &[Op], skip: usize) -> Option<i64> {
    let answers = resp.op_responses();
    let mut rev = None;
    for (op, answer) in ops.iter().zip(answers.iter().skip(skip)) {
        let TxnOpResponse::Get(g) = answer else {
            return None;
        };
        match op {
            Op::Put(_, v) => {
                let kv = g.kvs().first().filter(|kv| kv.value() == v.as_slice())?;
                rev = rev.max(Some(kv.mod_revision()));
            }
            Op::Delete(_) if !g.kvs().is_empty() => return None,
            Op::DeleteRange(..) if g.count() != 0 => return None,
            _ => {}
        }
    }
    (answers.len() == skip + ops.len()).then(|| rev.unwrap_or_else(|| revision(resp.header())))
}

impl Drop for EtcdWrites<'_> {
    fn drop(&mut self) {
        self.etcd.cache.close(self.batch);
    }
}

/// Caches what a commit at `rev` wrote, and tells the thread's open scopes.
fn remember(cache: &cache::Cache, ops: &[Op], rev: i64) {
    for op in ops {
        match op {
            Op::Put(k, v) => {
                cache.learn(k, Some((v.clone(), rev)), rev);
                cache.wrote(k, rev);
            }
            Op::Delete(k) => {
                cache.learn(k, None, rev);
                cache.wrote(k, 0);
            }
            Op::DeleteRange(from, to) => {
                cache.deleted_range(from, to, rev);
                cache.wrote_range(from, to);
            }
        }
    }
}

/// Drops what a commit of unknown outcome wrote.
fn forget(cache: &cache::Cache, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(k, _) | Op::Delete(k) => cache.forget(k),
            Op::DeleteRange(from, to) => cache.forget_range(from, to),
        }
    }
}

/// The writes a batch leaves, as etcd accepts them: one write per key, and no put inside a
/// deleted range (the range is split around it).
fn reduce(ops: Vec<Op>) -> Vec<Op> {
    let mut points: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    let mut ranges: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                points.insert(k, Some(v));
            }
            Op::Delete(k) => {
                points.insert(k, None);
            }
            Op::DeleteRange(from, to) => {
                let covered: Vec<Vec<u8>> = points
                    .range(from.clone()..to.clone())
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in covered {
                    points.remove(&k);
                }
                ranges.push((from, to));
            }
        }
    }
    let ranges = merge(ranges);
    let in_range = |k: &Vec<u8>| ranges.iter().any(|(a, b)| a <= k && k < b);
    let mut out = Vec::new();
    for (a, b) in &ranges {
        // Split around the keys put inside: [a, k1), (k1, k2), ... (kn, b).
        let mut start = a.clone();
        for (k, _) in points
            .range(a.clone()..b.clone())
            .filter(|(_, v)| v.is_some())
        {
            if start < *k {
                out.push(Op::DeleteRange(start, k.clone()));
            }
            start = k.clone();
            start.push(0);
        }
        if start < *b {
            out.push(Op::DeleteRange(start, b.clone()));
        }
    }
    for (k, v) in points {
        match v {
            Some(v) => out.push(Op::Put(k, v)),
            None if !in_range(&k) => out.push(Op::Delete(k)),
            None => {}
        }
    }
    out
}

/// Overlapping or touching ranges joined, in order.
fn merge(mut ranges: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    ranges.sort();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => {
                if b > last.1 {
                    last.1 = b;
                }
            }
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(ops: &[Op]) -> Vec<String> {
        ops.iter().map(|o| format!("{:?}", o.txn())).collect()
    }

    #[test]
    fn a_batch_reduces_to_one_write_per_key_and_ranges_split_around_puts() {
        let k = |s: &str| s.as_bytes().to_vec();
        let ops = vec![
            Op::Put(k("a"), k("1")),
            Op::Put(k("a"), k("2")),
            Op::DeleteRange(k("c"), k("g")),
            Op::Put(k("d"), k("3")),
            Op::Delete(k("e")),
            Op::DeleteRange(k("f"), k("h")),
            Op::Delete(k("z")),
        ];
        let out = shape(&reduce(ops));
        assert_eq!(out.len(), 5, "{out:#?}");
        // [c, d) and (d, h): the put of d survives, the delete of e is covered.
        assert!(
            out[0].contains("[99]") && out[0].contains("[100]"),
            "{}",
            out[0]
        );
        assert!(
            out[1].contains("[100, 0]") && out[1].contains("[104]"),
            "{}",
            out[1]
        );
        assert!(
            out[2].contains("[97]") && out[2].contains("[50]"),
            "last put of a wins"
        );
        assert!(out[3].contains("[100]") && out[3].contains("[51]"));
        assert!(out[4].contains("[122]"));
    }
}
