//! Handler calls: one object, one transaction. `Core::call` locks the object (and, for a call
//! by path, its directory), runs the handler against an `ObjectTxn` that holds every change
//! in memory, and commits them in one batch only if the handler's result is >= 0. A negative
//! result, an error or a tripped limit drops the transaction: nothing the handler wrote
//! reaches the store.
//!
//! The lock is the per-inode lock FUSE writes take, so handlers on one object are serialized
//! with each other and with writes to it; handlers on different objects run in parallel.
//!
//! Data changes are `store::data::Edits`: reads see them over the stored bytes, and the commit
//! hands them to the store in the same batch as the omap and xattr changes.

use std::collections::BTreeMap;

use super::omap::{parse, XName, XATTR_SIZE_MAX};
use super::{class::StoreModules, dir, Core, Name};
use crate::error::{Error, Result};
use crate::lua::{Call, Object, Outcome, Script};
use crate::store::codec::{Inode, Kind, Timestamp};
use crate::store::data::Edits;
use crate::store::keys::Ino;
use crate::store::meta::Version;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub enum Code<'a> {
    /// A method of a stored class.
    Class { class: &'a str, method: &'a str },
    /// A method of a script sent with the call (Ceph's eval).
    Inline { script: &'a [u8], method: &'a str },
}

/// The object a call runs on: its inode and, for calls by path, the entry naming it (which
/// `remove()` unlinks).
#[derive(Debug, Clone)]
pub struct Target {
    pub ino: Ino,
    pub entry: Option<(Ino, Name)>,
    /// The object's path from the mount root, as the caller gave it (for calls by path).
    pub path: Option<Vec<u8>>,
    /// The caller's uid: only root's handlers may write `trusted.*`/`security.*` xattrs,
    /// as the kernel would allow only root (CAP_SYS_ADMIN) to write them itself.
    pub uid: u32,
    /// Whether the call may leave the object smaller than it found it. The FUSE adapter
    /// says no when it could not make the kernel's cached size follow (see `fs::invoke`):
    /// such a call fails with EOPNOTSUPP instead of committing.
    pub may_shrink: bool,
    /// Whether the caller may change the object. A call by path needs only read
    /// permission to run; one that changed anything without write permission fails with
    /// EACCES and commits nothing.
    pub may_write: bool,
    /// The task whose request made the call (a killed caller's call stops early).
    pub caller: Option<u32>,
    /// The notification whose trigger runs the call: the events of its changes are not
    /// routed back to that notification.
    pub cause: Option<String>,
}

/// What happens after a call that did not come through the kernel (a trigger run by the
/// dispatcher): the FUSE adapter drops the kernel's cached copies of what it changed.
pub trait AfterCall: Send + Sync {
    fn after_call(&self, target: &Target, reply: &CallReply);
    /// The call could not run or commit (`Core::call` failed with `error`).
    fn call_failed(&self, _target: &Target, _error: &crate::error::Error) {}
}

/// The result of a call, and what it changed (for the kernel's caches).
#[derive(Debug, Clone)]
pub struct CallReply {
    pub outcome: Outcome,
    /// The object's bytes changed (an ObjectCreated:Put event).
    pub data_changed: bool,
    /// Anything of the object changed (data, omap, xattrs, times).
    pub changed: bool,
    /// `remove()` unlinked the name the call came through.
    pub unlinked: bool,
    /// The object's size before and after the call.
    pub sizes: (u64, u64),
    /// How long the call took, its commit (and any rerun after a conflict) included.
    pub took: std::time::Duration,
}

impl CallReply {
    fn unchanged(outcome: Outcome) -> CallReply {
        CallReply {
            outcome,
            data_changed: false,
            changed: false,
            unlinked: false,
            sizes: (0, 0),
            took: std::time::Duration::ZERO,
        }
    }
}

/// Longest omap key a handler may write: `user.` + key must fit the kernel's 255-byte
/// xattr names, or getfattr could never show it.
const MAX_OMAP_KEY: usize = 250;

impl Core {
    /// Runs a handler call on `target` and commits what it changed; the reply says how long
    /// that took.
    pub fn call(&self, target: &Target, code: Code<'_>, input: &[u8]) -> Result<CallReply> {
        let started = std::time::Instant::now();
        let mut reply = self.call_untimed(target, code, input)?;
        reply.took = started.elapsed();
        Ok(reply)
    }

    /// `call`, then tells `after` how it went: its reply, or why it could not run.
    pub fn call_then(
        &self,
        after: &dyn AfterCall,
        target: &Target,
        code: Code<'_>,
        input: &[u8],
    ) -> Result<CallReply> {
        let r = self.call(target, code, input);
        match &r {
            Ok(reply) => after.after_call(target, reply),
            Err(e) => after.call_failed(target, e),
        }
        r
    }

    fn call_untimed(&self, target: &Target, code: Code<'_>, input: &[u8]) -> Result<CallReply> {
        if let Code::Class { class, method } = code {
            if class == super::ceph::CLASS {
                return match super::ceph::decode(method, input) {
                    Some(Ok(eval)) => {
                        let code = Code::Inline {
                            script: &eval.script,
                            method: &eval.handler,
                        };
                        self.call_untimed(target, code, &eval.input)
                    }
                    Some(Err(e)) => Ok(CallReply::unchanged(Outcome::failed(
                        e.errno(),
                        e.to_string(),
                    ))),
                    None => Ok(CallReply::unchanged(Outcome::failed(
                        libc::EOPNOTSUPP,
                        format!("class lua has no method {method:?} (eval_json, eval_bufferlist)"),
                    ))),
                };
            }
        }
        let (script, class, method) = match code {
            Code::Class { class, method } => match self.class(class)? {
                Some(s) => (s, class, method),
                None => {
                    return Ok(CallReply::unchanged(Outcome::failed(
                        libc::EOPNOTSUPP,
                        format!("class {class:?} is not installed"),
                    )))
                }
            },
            Code::Inline { script, method } => (
                std::sync::Arc::new(Script {
                    name: "(inline)".into(),
                    // Same source, same compiled function: a content hash as generation.
                    generation: inline_generation(script),
                    source: script.into(),
                }),
                "(inline)",
                method,
            ),
        };
        self.transact("handler call", || {
            self.call_once(target, &script, (class, method), input)
        })
    }

    /// One run of a call and its commit: run again (handler included) if another mount
    /// changed the object meanwhile.
    fn call_once(
        &self,
        target: &Target,
        script: &Script,
        (class, method): (&str, &str),
        input: &[u8],
    ) -> Result<CallReply> {
        // Only the object: a long handler must not hold up its directory (creates, renames
        // of its neighbours). A commit that unlinks takes the directory's lock too, below.
        let held = self.locks.lock(&[target.ino]);
        self.store_held(target.ino)?; // the handler sees and changes what was written
        let (inode, version) = self
            .store
            .inode_versioned(target.ino)?
            .ok_or_else(|| Error::NotFound(format!("inode {}", target.ino)))?;
        match inode.kind {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDir(describe(target))),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{}: handlers run on regular files",
                    describe(target)
                )))
            }
        }
        if let Some((parent, name)) = &target.entry {
            if self.store.dentry(*parent, name.as_bytes())?.map(|d| d.ino) != Some(target.ino) {
                return Err(Error::NotFound(describe(target)));
            }
        }
        let size_before = inode.size;
        let mut txn = ObjectTxn::new(self, target, inode, version);
        let call = Call {
            script,
            method,
            input,
            class,
            caller: target.caller,
        };
        let outcome = self.engine.call(&call, &mut txn, &StoreModules(self));
        if outcome.result < 0 {
            tracing::debug!(class, method, object = %describe(target), result = outcome.result,
                message = outcome.message.as_deref().unwrap_or(""), "handler failed; changes dropped");
            return Ok(CallReply::unchanged(outcome));
        }
        if (txn.data_changed || txn.meta_changed) && !target.may_write {
            return Ok(CallReply::unchanged(Outcome::failed(
                libc::EACCES,
                format!(
                    "{class}.{method} changed {}, which the caller may read but not write",
                    describe(target)
                ),
            )));
        }
        let size_after = txn.inode.size;
        if size_after < size_before && txn.exists && !target.may_shrink {
            return Ok(CallReply::unchanged(Outcome::failed(
                libc::EOPNOTSUPP,
                format!(
                    "{class}.{method} would shrink {} from {size_before} to {size_after} bytes, \
                     which the kernel's cached size cannot follow on a setfattr call: call it by \
                     path (lunafs call, /.lunafs/call) or mount with no_writeback_cache",
                    describe(target)
                ),
            )));
        }
        let changed = txn.data_changed || txn.meta_changed;
        let data_changed = txn.data_changed;
        let _held = match (&target.entry, txn.removes_name()) {
            (Some((parent, name)), true) => {
                // Both locks at once, in the one global order (Locks), so this cannot
                // deadlock with an unlink or rename; the name is checked again after.
                drop(held);
                let both = self.locks.lock(&[*parent, target.ino]);
                if self.store.dentry(*parent, name.as_bytes())?.map(|d| d.ino) != Some(target.ino) {
                    return Ok(CallReply::unchanged(Outcome::failed(
                        libc::ENOENT,
                        format!("{}: renamed or removed during the call", describe(target)),
                    )));
                }
                both
            }
            _ => held,
        };
        // The daemon began stopping while the call ran: nobody reads its result.
        if crate::lua::calls_abandoned() {
            return Ok(CallReply::unchanged(Outcome::failed(
                libc::ECANCELED,
                "lunafs is stopping; the call was abandoned",
            )));
        }
        let unlinked = txn.commit()?;
        Ok(CallReply {
            outcome,
            data_changed,
            changed,
            unlinked,
            sizes: (size_before, size_after),
            took: std::time::Duration::ZERO,
        })
    }

    /// The per-call limits of handlers.
    pub fn set_lua_limits(&self, limits: crate::lua::Limits) {
        self.engine.set_limits(limits);
    }
}

fn inline_generation(source: &[u8]) -> u64 {
    use md5::{Digest, Md5};
    let d = Md5::digest(source);
    u64::from_be_bytes(d[..8].try_into().expect("an MD5 digest has 16 bytes"))
}

fn describe(target: &Target) -> String {
    match &target.path {
        Some(p) => String::from_utf8_lossy(p).into_owned(),
        None => format!("inode {}", target.ino),
    }
}

/// Where an xattr name of the cls API lives: as for the kernel (`omap::parse`), and a bare
/// `K` (no namespace), as Ceph scripts write it, is omap key `K`.
fn xname(name: &[u8]) -> Result<XName<'_>> {
    match parse(name) {
        Err(Error::Unsupported(_)) if !name.starts_with(b"system.") => Ok(XName::Omap(name)),
        r => r,
    }
}

fn check_omap_key(key: &[u8]) -> Result<()> {
    let shown = || String::from_utf8_lossy(key).into_owned();
    if key.is_empty() || key.contains(&0) {
        return Err(Error::InvalidArgument(format!("omap key {:?}", shown())));
    }
    if key.len() > MAX_OMAP_KEY {
        return Err(Error::NameTooLong(key.len()));
    }
    Ok(())
}

/// Changes to one key/value family of the object (omap, or plain xattrs) over what is stored:
/// `None` deletes a key, `cleared` drops every stored key first.
#[derive(Default)]
struct Overlay {
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    cleared: bool,
}

impl Overlay {
    fn get(
        &self,
        key: &[u8],
        stored: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<Option<Vec<u8>>> {
        match self.changes.get(key) {
            Some(v) => Ok(v.clone()),
            None if self.cleared => Ok(None),
            None => stored(),
        }
    }

    fn set(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.changes.insert(key.to_vec(), value.map(<[u8]>::to_vec));
    }

    fn clear(&mut self) {
        self.changes.clear();
        self.cleared = true;
    }

    /// Every key as the call sees it, in order.
    fn merged(
        &self,
        stored: impl FnOnce() -> Result<Vec<(Vec<u8>, Vec<u8>)>>,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut all: BTreeMap<Vec<u8>, Vec<u8>> = if self.cleared {
            BTreeMap::new()
        } else {
            stored()?.into_iter().collect()
        };
        for (k, v) in &self.changes {
            match v {
                Some(v) => all.insert(k.clone(), v.clone()),
                None => all.remove(k),
            };
        }
        Ok(all)
    }
}

/// Every change of one call, held until commit.
struct ObjectTxn<'c> {
    core: &'c Core,
    target: &'c Target,
    /// The inode as the call began, with its version: the commit checks it is unchanged.
    read: (Inode, Version),
    /// The inode as the handler sees it (size, times).
    inode: Inode,
    /// False after `remove()` (until a `create()`).
    exists: bool,
    /// `remove()` was called: the content was wiped, and the name goes unless re-created.
    removed: bool,
    data: Edits,
    omap: Overlay,
    header: Option<Option<Vec<u8>>>,
    /// The non-`user.` xattrs, by full name.
    xattrs: Overlay,
    data_changed: bool,
    meta_changed: bool,
    /// Bytes the overlays hold, and the most they may (the call's memory limit): the
    /// changes live on the Rust heap, outside the Lua budget.
    held: usize,
    max_held: usize,
}

impl<'c> ObjectTxn<'c> {
    /// Accounts `added` new and `removed` replaced overlay bytes.
    fn hold(&mut self, added: usize, removed: usize) -> Result<()> {
        let held = (self.held + added).saturating_sub(removed);
        if held > self.max_held {
            return Err(Error::NoMemory(format!(
                "{}: the call's pending changes",
                describe(self.target)
            )));
        }
        self.held = held;
        Ok(())
    }

    fn new(core: &'c Core, target: &'c Target, inode: Inode, version: Version) -> Self {
        let size = inode.size;
        ObjectTxn {
            core,
            target,
            read: (inode.clone(), version),
            inode,
            exists: true,
            removed: false,
            data: Edits::new(size),
            omap: Overlay::default(),
            header: None,
            xattrs: Overlay::default(),
            data_changed: false,
            meta_changed: false,
            held: 0,
            max_held: core.engine.limits().memory,
        }
    }

    fn ino(&self) -> Ino {
        self.inode.ino
    }

    fn present(&self) -> Result<()> {
        if self.exists {
            Ok(())
        } else {
            Err(Error::NotFound(describe(self.target)))
        }
    }

    /// Before a change that creates the object if `remove()` took it, as a write to a
    /// missing object creates it in Ceph: the object comes back empty, and keeps its name.
    fn recreate(&mut self) {
        if !self.exists {
            self.exists = true;
            self.meta_changed = true;
        }
    }

    fn changed_data(&mut self) {
        self.data_changed = true;
    }

    /// Whether the commit unlinks the call's name (`remove()` without a later `create()`).
    fn removes_name(&self) -> bool {
        self.removed && !self.exists
    }

    /// For the call's event in a watched bucket: the MD5 the content is left with (if the
    /// data changed) and the omap the call leaves, read through the changes.
    #[allow(clippy::type_complexity)]
    fn event_facts(&mut self) -> Result<Option<(Option<String>, Vec<(Vec<u8>, Vec<u8>)>)>> {
        if !self.exists || !self.core.watches(&self.inode) {
            return Ok(None);
        }
        let md5 = match self.data_changed {
            true => Some(super::events::md5_of(self.inode.size, |at, end| {
                Object::read(self, at, end - at)
            })?),
            false => None,
        };
        Ok(Some((md5, self.map_get_vals(b"", b"", usize::MAX)?)))
    }

    /// Commits every change in one batch; returns whether the name was unlinked.
    fn commit(mut self) -> Result<bool> {
        if !self.data_changed && !self.meta_changed {
            return Ok(false);
        }
        let event = self.event_facts()?;
        let core = self.core;
        let ino = self.ino();
        let now = Timestamp::now();
        let mut txn = core.txn();
        let (inode, version) = self.read.clone();
        txn.seed(inode, version);
        let mut queued = super::events::Enqueued::NONE;
        let unlink = self.removes_name();
        if unlink {
            let (parent, name) = self
                .target
                .entry
                .as_ref()
                .expect("remove() refuses calls without an entry");
            // The directory's version, then its entry again: both checked at the commit.
            txn.get(*parent)?;
            if core.store.dentry(*parent, name.as_bytes())?.map(|d| d.ino) != Some(ino) {
                return Err(Error::NotFound(describe(self.target)));
            }
            if txn.get(ino)?.nlink <= 1 {
                let side = (*parent, name.as_bytes(), ino);
                queued = core.queue_delete(&mut txn, side, self.target.uid)?;
            }
            txn.batch.delete_dentry(*parent, name.as_bytes());
            dir::touch_dir(txn.modify(*parent)?, now, 0);
            // The last name of a closed file: the inode and all it owns are purged, so
            // there is no content left to write.
            if core.drop_link(&mut txn, (*parent, name.as_bytes(), ino), now)? {
                txn.commit()?;
                core.queued(queued);
                return Ok(true);
            }
        }
        let b = &mut txn.batch;
        if !self.data.is_empty() {
            b.apply(ino, &self.data)?;
        }
        if self.omap.cleared {
            b.clear_omap(ino);
        }
        for (k, v) in &self.omap.changes {
            match v {
                Some(v) => b.put_omap(ino, k, v),
                None => b.delete_omap(ino, k),
            }
        }
        if self.xattrs.cleared {
            for (name, _) in core.store.xattr_entries(ino)? {
                b.delete_xattr(ino, &name);
            }
        }
        for (k, v) in &self.xattrs.changes {
            match v {
                Some(v) => b.put_xattr(ino, k, v),
                None => b.delete_xattr(ino, k),
            }
        }
        match &self.header {
            Some(Some(h)) => b.put_omap_header(ino, h),
            Some(None) => b.delete_omap_header(ino),
            None => {}
        }
        let inode = txn.modify(ino)?;
        inode.size = self.inode.size;
        if self.data_changed {
            inode.mtime = now;
        }
        inode.ctime = now;
        let inode = inode.clone();
        let (uid, cause) = (self.target.uid, self.target.cause.as_deref());
        match event {
            Some((Some(md5), metadata)) => queued.add(core.queue_call_put(
                &mut txn.batch,
                &inode,
                (inode.size, inode.mtime),
                (&md5, metadata),
                uid,
                cause,
            )?),
            Some((None, metadata)) => {
                queued.add(core.queue_metadata(&mut txn.batch, &inode, metadata, uid, cause)?)
            }
            None => {}
        }
        txn.commit()?;
        if self.data_changed {
            core.note_rewritten(ino);
        }
        core.queued(queued);
        Ok(unlink)
    }
}

impl Object for ObjectTxn<'_> {
    fn stat(&mut self) -> Result<(u64, i64)> {
        self.present()?;
        Ok((self.inode.size, self.inode.mtime.sec))
    }

    fn create(&mut self, exclusive: bool) -> Result<()> {
        if self.exists {
            return if exclusive {
                Err(Error::Exists(describe(self.target)))
            } else {
                Ok(())
            };
        }
        self.exists = true;
        self.meta_changed = true;
        Ok(())
    }

    fn remove(&mut self) -> Result<()> {
        self.present()?;
        if self.target.entry.is_none() {
            return Err(Error::Unsupported(format!(
                "remove() of {}: only a call by path (control file or `lunafs call`) knows the name to unlink",
                describe(self.target)
            )));
        }
        self.truncate(0)?;
        self.map_clear()?;
        self.xattrs.clear();
        self.exists = false;
        self.removed = true;
        Ok(())
    }

    fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.present()?;
        let size = self.inode.size;
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = size.min(offset.saturating_add(len));
        let (store, ino) = (&self.core.store, self.ino());
        self.data.read(offset, end, |a, b| store.read(ino, a, b))
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.recreate();
        if data.is_empty() {
            return Ok(());
        }
        let before = self.data.held();
        self.data.write(offset, data)?;
        self.hold(self.data.held(), before)?;
        self.inode.size = self.data.size();
        self.changed_data();
        Ok(())
    }

    fn write_full(&mut self, data: &[u8]) -> Result<()> {
        self.truncate(0)?;
        self.write(0, data)
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        self.recreate();
        let before = self.data.held();
        self.data.truncate(size)?;
        self.hold(self.data.held(), before)?;
        if size != self.inode.size {
            self.inode.size = size;
            self.changed_data();
        }
        Ok(())
    }

    fn getxattr(&mut self, name: &[u8]) -> Result<Vec<u8>> {
        self.present()?;
        let missing = || Error::NoAttr(String::from_utf8_lossy(name).into_owned());
        match xname(name)? {
            XName::Omap(k) => {
                let (store, ino) = (&self.core.store, self.ino());
                self.omap
                    .get(k, || store.omap_get(ino, k))?
                    .ok_or_else(missing)
            }
            XName::Plain(n) => {
                let (store, ino) = (&self.core.store, self.ino());
                self.xattrs
                    .get(n, || store.xattr_get(ino, n))?
                    .ok_or_else(missing)
            }
        }
    }

    /// Omap entries under their bare keys (as Ceph scripts name xattrs, and as `getxattr`
    /// and `setxattr` take them), other namespaces under their full names.
    fn getxattrs(&mut self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.present()?;
        let mut out = self.map_get_vals(b"", b"", usize::MAX)?;
        let (store, ino) = (&self.core.store, self.ino());
        out.extend(self.xattrs.merged(|| store.xattr_entries(ino))?);
        Ok(out)
    }

    fn setxattr(&mut self, name: &[u8], value: &[u8]) -> Result<()> {
        self.recreate();
        match xname(name)? {
            XName::Omap(k) => self.map_set_val(k, value),
            XName::Plain(n) => {
                if self.target.uid != 0 {
                    return Err(Error::NotPermitted(format!(
                        "{}: only root's handlers may set {}",
                        describe(self.target),
                        String::from_utf8_lossy(n)
                    )));
                }
                if value.len() > XATTR_SIZE_MAX {
                    return Err(Error::ValueTooLarge(
                        String::from_utf8_lossy(n).into_owned(),
                        value.len(),
                    ));
                }
                self.hold(n.len() + value.len(), 0)?;
                self.xattrs.set(n, Some(value));
                self.meta_changed = true;
                Ok(())
            }
        }
    }

    fn map_get_val(&mut self, key: &[u8]) -> Result<Vec<u8>> {
        self.present()?;
        let (store, ino) = (&self.core.store, self.ino());
        self.omap
            .get(key, || store.omap_get(ino, key))?
            .ok_or_else(|| Error::NotFound(format!("omap key {:?}", String::from_utf8_lossy(key))))
    }

    fn map_set_val(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.recreate();
        check_omap_key(key)?;
        self.hold(key.len() + value.len(), 0)?;
        self.omap.set(key, Some(value));
        self.meta_changed = true;
        Ok(())
    }

    fn map_get_vals(
        &mut self,
        start_after: &[u8],
        prefix: &[u8],
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.present()?;
        let (store, ino) = (&self.core.store, self.ino());
        Ok(self
            .omap
            .merged(|| store.omap_entries(ino))?
            .into_iter()
            .filter(|(k, _)| k.as_slice() > start_after && k.starts_with(prefix))
            .take(max)
            .collect())
    }

    fn map_remove_key(&mut self, key: &[u8]) -> Result<()> {
        self.present()?;
        // Ceph's omap_rm_keys: removing a missing key is not an error.
        self.omap.set(key, None);
        self.meta_changed = true;
        Ok(())
    }

    /// Ceph's omap_clear: the entries and the header.
    fn map_clear(&mut self) -> Result<()> {
        self.present()?;
        self.omap.clear();
        self.header = Some(None);
        self.meta_changed = true;
        Ok(())
    }

    fn map_read_header(&mut self) -> Result<Vec<u8>> {
        self.present()?;
        Ok(match &self.header {
            Some(h) => h.clone(),
            None => self.core.store.omap_header(self.ino())?,
        }
        .unwrap_or_default())
    }

    fn map_write_header(&mut self, value: &[u8]) -> Result<()> {
        self.recreate();
        self.header = Some(Some(value.to_vec()));
        self.meta_changed = true;
        Ok(())
    }

    fn current_version(&mut self) -> Result<u64> {
        self.present()?;
        let c = self.inode.ctime;
        Ok((c.sec.max(0) as u64) * 1_000_000_000 + c.nsec as u64)
    }

    fn describe(&self) -> String {
        describe(self.target)
    }
}
