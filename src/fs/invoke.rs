//! Running handler calls from FUSE requests, on the call pool (`pool`): `setfattr -n
//! user.cls.CLASS.METHOD -v INPUT` (setfattr fails with the handler's errno; its output is
//! dropped) and `/.lunafs/call` requests (result, output and message in the response).
//!
//! Calls by path check the caller's access as the kernel would: search permission on every
//! directory on the way and read permission on the object to run a call; a call that then
//! changed the object also needs write permission, or it fails with EACCES and commits
//! nothing (`core` enforces that). Afterwards the kernel is told to drop what it cached of
//! anything the call changed, since the change did not come through its page cache.
//!
//! The size needs more: with the writeback cache (the default) the kernel trusts its own
//! cached size of a regular file over ours, whatever we invalidate. A call that grew the
//! object pushes its new last byte into the kernel's cache (notify_store), which moves the
//! kernel's size up. A call by path that shrank it truncates the file through the mount, so
//! the kernel truncates its copy too. A setfattr call cannot do that (the kernel holds the
//! inode's lock for the request, and the call carries no name), so there a shrinking call
//! is refused by `core` before it commits.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use fuser::{AccessFlags, INodeNo, ReplyData, ReplyEmpty};
use parking_lot::Mutex;

use super::attr::file_attr;
use super::call::{self, Exchange, What};
use super::pool::Job;
use super::stats::{Op, Started, Stats};
use super::{permits, Errno};
use crate::core::call::{CallReply, Code, Target};
use crate::core::{Core, Ctx};
use crate::error::{Error, Result};
use crate::store::keys::Ino;

/// The xattr name prefix that calls a handler instead of storing a value.
const CALL_PREFIX: &[u8] = b"user.cls.";

/// `user.cls.CLASS.METHOD` -> (CLASS, METHOD).
pub fn xattr_call(name: &[u8]) -> Option<(String, String)> {
    let rest = std::str::from_utf8(name.strip_prefix(CALL_PREFIX)?).ok()?;
    let (class, method) = rest.split_once('.')?;
    (!class.is_empty() && !method.is_empty()).then(|| (class.to_string(), method.to_string()))
}

/// What a call from a FUSE request needs of the mount, shared with the pool's threads.
pub struct Invoker {
    pub core: Arc<Core>,
    pub stats: Arc<Stats>,
    /// Set once the session exists.
    pub notifier: Arc<OnceLock<fuser::Notifier>>,
    /// Whether the kernel keeps a writeback cache (known after FUSE init).
    pub writeback: AtomicBool,
    pub mountpoint: String,
}

/// An open `/.lunafs/call`: the protocol state, and the reads that arrived while its call
/// ran (answered from the response once it is there).
#[derive(Default)]
pub struct CallFile {
    pub exchange: Exchange,
    running: bool,
    waiting: Vec<(ReplyData, u32)>,
}

impl CallFile {
    /// A write of request bytes; refused while the previous batch's calls run.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.running {
            return Err(Error::Busy(
                "/.lunafs/call: the previous calls are still running".into(),
            ));
        }
        self.exchange.write(data)
    }
}

/// A `user.cls.CLASS.METHOD` setxattr, queued.
pub struct XattrCall {
    pub invoker: Arc<Invoker>,
    pub ctx: Ctx,
    pub ino: Ino,
    pub class: String,
    pub method: String,
    pub input: Vec<u8>,
    pub reply: ReplyEmpty,
    /// The setxattr's start: its latency is taken when the call has answered it.
    pub started: Started,
}

impl Job for XattrCall {
    fn run(self: Box<Self>) {
        let r = self.invoker.call_by_xattr(
            self.ctx,
            self.ino,
            (&self.class, &self.method),
            &self.input,
        );
        let stats = &self.invoker.stats;
        match r {
            Ok(()) => self.reply.ok(),
            Err(e) => {
                stats.error(Op::Setxattr, e.errno());
                tracing::debug!(error = %e, "handler call by setxattr failed");
                self.reply.error(Errno::from_i32(e.errno()))
            }
        }
        stats.answered(self.started);
    }

    fn refuse(self: Box<Self>, errno: i32) {
        let stats = &self.invoker.stats;
        stats.handler(false);
        stats.error(Op::Setxattr, errno);
        self.reply.error(Errno::from_i32(errno));
        stats.answered(self.started);
    }
}

/// The read that runs a batch of `/.lunafs/call` requests, queued.
pub struct FileCall {
    pub invoker: Arc<Invoker>,
    pub ctx: Ctx,
    pub file: Arc<Mutex<CallFile>>,
    pub requests: VecDeque<call::Request>,
    /// The responses of the requests run so far, in order.
    pub responses: Vec<u8>,
    pub size: u32,
    /// Taken when answered; a FileCall dropped unanswered (a panic) answers with EIO.
    pub reply: Option<ReplyData>,
    /// The read's start (None when it goes uncounted): its latency is taken when answered.
    pub started: Option<Started>,
}

impl FileCall {
    /// Stores the responses (with `rest` for each request not run) and answers this read
    /// and any that waited for it.
    fn finish(&mut self, rest: (i32, &str)) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let mut responses = std::mem::take(&mut self.responses);
        for _ in self.requests.drain(..) {
            responses.extend(call::response(rest.0, b"", rest.1));
        }
        let mut file = self.file.lock();
        file.exchange.respond(responses);
        file.running = false;
        let first = file.exchange.read(self.size as usize);
        self.invoker.stats.read(first.len());
        reply.data(&first);
        if let Some(started) = self.started.take() {
            self.invoker.stats.answered(started);
        }
        for (reply, size) in std::mem::take(&mut file.waiting) {
            let data = file.exchange.read(size as usize);
            self.invoker.stats.read(data.len());
            reply.data(&data);
        }
    }
}

impl Drop for FileCall {
    fn drop(&mut self) {
        self.finish((-libc::EIO, "the call failed inside lunafs"));
    }
}

impl Job for FileCall {
    fn run(mut self: Box<Self>) {
        // In order; each request leaves the batch once its response is in.
        while !self.requests.is_empty() {
            let response = self.invoker.run_request(self.ctx, &self.requests[0]);
            self.responses.extend(response);
            self.requests.pop_front();
        }
        self.finish((0, ""));
    }

    fn refuse(mut self: Box<Self>, errno: i32) {
        for _ in &self.requests {
            self.invoker.stats.handler(false);
        }
        self.finish((-errno, "the handler-call queue is full; try again"));
    }
}

/// What a read of an open `/.lunafs/call` does: answer now from the responses, wait for a
/// batch that is running, or start the batch of requests waiting for it.
pub enum CallRead {
    Answered,
    Start(Vec<call::Request>, ReplyData),
}

impl CallFile {
    pub fn read(&mut self, size: u32, reply: ReplyData) -> CallRead {
        if self.running {
            self.waiting.push((reply, size));
            return CallRead::Answered;
        }
        let batch = self.exchange.take_pending();
        if !batch.is_empty() {
            self.running = true;
            return CallRead::Start(batch, reply);
        }
        reply.data(&self.exchange.read(size as usize));
        CallRead::Answered
    }
}

impl Invoker {
    fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }

    fn call_by_xattr(
        &self,
        ctx: Ctx,
        ino: Ino,
        (class, method): (&str, &str),
        input: &[u8],
    ) -> Result<()> {
        // The kernel checked write access for the setxattr itself.
        let target = Target {
            ino,
            entry: None,
            path: None,
            uid: ctx.uid,
            may_shrink: !self.writeback(),
            may_write: true,
            caller: Some(ctx.pid),
            cause: None,
        };
        let reply = self
            .core
            .call_then(self, &target, Code::Class { class, method }, input)?;
        let outcome = reply.outcome;
        if outcome.result < 0 {
            return Err(Error::Handler {
                what: format!("{class}.{method} on inode {ino}"),
                errno: outcome.result.checked_neg().unwrap_or(i32::MAX),
                message: outcome.message.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Runs one `/.lunafs/call` request and returns the encoded response.
    fn run_request(&self, ctx: Ctx, request: &call::Request) -> Vec<u8> {
        let code = match &request.what {
            What::Exec { class, method } => Code::Class { class, method },
            What::Eval { method, script } => Code::Inline { script, method },
        };
        let result = match self.resolve(ctx, &request.path) {
            Ok(target) => self.core.call_then(self, &target, code, &request.input),
            Err(e) => {
                self.stats.handler(false); // a call that could not start is a failed one
                Err(e)
            }
        };
        match result {
            Ok(reply) => {
                let o = reply.outcome;
                call::response(o.result, &o.output, o.message.as_deref().unwrap_or(""))
            }
            Err(e) => call::response(-e.errno(), b"", &e.to_string()),
        }
    }

    /// The object at `path`, if the caller may read it.
    fn resolve(&self, ctx: Ctx, path: &[u8]) -> Result<Target> {
        let walked = self.core.walk(path)?;
        let shown = || String::from_utf8_lossy(path).into_owned();
        let (uid, gid) = (ctx.uid, ctx.gid);
        for dir in &walked.dirs {
            if !permits(&file_attr(dir), uid, gid, AccessFlags::X_OK) {
                return Err(Error::AccessDenied(shown()));
            }
        }
        let attr = file_attr(&walked.inode);
        if !permits(&attr, uid, gid, AccessFlags::R_OK) {
            return Err(Error::AccessDenied(shown()));
        }
        Ok(Target {
            ino: walked.inode.ino,
            entry: Some((walked.parent, walked.name)),
            path: Some(path.to_vec()),
            uid,
            may_shrink: true,
            may_write: permits(&attr, uid, gid, AccessFlags::W_OK),
            caller: Some(ctx.pid),
            cause: None,
        })
    }
}

impl crate::core::call::AfterCall for Invoker {
    fn call_failed(&self, _target: &Target, _error: &Error) {
        self.stats.handler(false);
    }

    fn after_call(&self, target: &Target, reply: &CallReply) {
        self.stats.handler(reply.outcome.result >= 0);
        self.stats.handler_took(reply.took);
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        // Also after an unlink: the inode may live on (another link, an open file).
        if reply.changed {
            // Offset 0, length 0: every cached page and the attributes; offset -1: only the
            // attributes (a call that changed just the omap leaves the pages valid).
            let offset = if reply.data_changed { 0 } else { -1 };
            if let Err(e) = notifier.inval_inode(INodeNo(target.ino), offset, 0) {
                tracing::debug!(ino = target.ino, error = %e, "invalidating the inode failed");
            }
            if self.writeback() {
                self.resize_kernel_copy(notifier, target, reply.sizes);
            }
        }
        if let (true, Some((parent, name))) = (reply.unlinked, &target.entry) {
            let name = OsStr::from_bytes(name.as_bytes());
            if let Err(e) = notifier.inval_entry(INodeNo(*parent), name) {
                tracing::debug!(error = %e, "invalidating the entry failed");
            }
        }
    }
}

impl Invoker {
    /// Makes the kernel's cached size follow a call's change of it (writeback cache only).
    fn resize_kernel_copy(&self, notifier: &fuser::Notifier, target: &Target, sizes: (u64, u64)) {
        let (before, after) = sizes;
        if after > before {
            match self.core.read(target.ino, after - 1, 1) {
                Ok(last) => {
                    if let Err(e) = notifier.store(INodeNo(target.ino), after - 1, &last) {
                        tracing::debug!(ino = target.ino, error = %e, "storing the new size failed");
                    }
                }
                Err(e) => tracing::warn!(ino = target.ino, error = %e, "reading the new last byte"),
            }
        } else if after < before {
            let Some(rel) = &target.path else { return };
            // Through the mount: the kernel sends us a setattr to the size the store
            // already has, which a FUSE worker serves (this runs on a pool thread). Waited
            // for, so the caller sees the new size once its call returns; bounded, in case
            // the workers are all busy.
            let rel_path = std::path::Path::new(OsStr::from_bytes(rel));
            let path = std::path::Path::new(&self.mountpoint)
                .join(rel_path.strip_prefix("/").unwrap_or(rel_path));
            let ino = target.ino;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(truncate_object(&path, ino, after));
            });
            let shown = String::from_utf8_lossy(rel);
            match rx.recv_timeout(std::time::Duration::from_secs(5)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(object = %shown, error = %e, "truncating the kernel's copy failed")
                }
                Err(_) => {
                    tracing::warn!(object = %shown, "truncating the kernel's copy is taking long; not waiting")
                }
            }
        }
    }
}

/// Truncates the file at `path` only if it is still inode `ino`: the name may have been
/// renamed or replaced since the call, and the daemon usually runs as root.
fn truncate_object(path: &std::path::Path, ino: Ino, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if file.metadata()?.ino() != ino {
        return Err(std::io::Error::other("the name now holds another file"));
    }
    file.set_len(size)
}

#[cfg(test)]
mod tests {
    use super::xattr_call;

    #[test]
    fn only_user_cls_class_method_names_are_calls() {
        assert_eq!(
            xattr_call(b"user.cls.md5.digest"),
            Some(("md5".into(), "digest".into()))
        );
        assert_eq!(
            xattr_call(b"user.cls.thumb.make.big"),
            Some(("thumb".into(), "make.big".into()))
        );
        assert_eq!(xattr_call(b"user.cls.md5"), None);
        assert_eq!(xattr_call(b"user.color"), None);
        assert_eq!(xattr_call(b"trusted.cls.a.b"), None);
    }
}
