//! Running handler calls from FUSE requests: `setfattr -n user.cls.CLASS.METHOD -v INPUT`
//! (setfattr fails with the handler's errno; its output is dropped) and `/.lunafs/call`
//! requests (result, output and message in the response). Calls by path check the caller's
//! access as the kernel would for a write: search permission on every directory on the way
//! and write permission on the object. Afterwards the kernel is told to drop what it cached
//! of anything the call changed, since the change did not come through its page cache.
//!
//! The size needs more: with the writeback cache (the default) the kernel trusts its own
//! cached size of a regular file over ours, whatever we invalidate. A call that grew the
//! object pushes its new last byte into the kernel's cache (notify_store), which moves the
//! kernel's size up. A call by path that shrank it truncates the file through the mount, so
//! the kernel truncates its copy too. A setfattr call cannot do that (the kernel holds the
//! inode's lock for the request, and the call carries no name), so there a shrinking call
//! is refused by `core` before it commits.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use fuser::{AccessFlags, INodeNo, Request};

use super::attr::file_attr;
use super::call::{self, What};
use super::{permits, LunaFs};
use crate::core::call::{CallReply, Code, Target};
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

impl LunaFs {
    pub(super) fn call_by_xattr(
        &self,
        req: &Request,
        ino: Ino,
        (class, method): (String, String),
        input: &[u8],
    ) -> Result<()> {
        let target = Target {
            ino,
            entry: None,
            path: None,
            uid: req.uid(),
            may_shrink: !self.writeback,
        };
        let code = Code::Class {
            class: &class,
            method: &method,
        };
        let reply = self.core.call(&target, code, input)?;
        self.after_call(&target, &reply);
        let outcome = reply.outcome;
        if outcome.result < 0 {
            return Err(Error::Handler {
                what: format!("{class}.{method} on inode {ino}"),
                errno: -outcome.result,
                message: outcome.message.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Runs one `/.lunafs/call` request and returns the encoded response.
    pub(super) fn run_request(&self, req: &Request, request: &call::Request) -> Vec<u8> {
        let result = self.resolve(req, &request.path).and_then(|target| {
            let code = match &request.what {
                What::Exec { class, method } => Code::Class { class, method },
                What::Eval { method, script } => Code::Inline { script, method },
            };
            let reply = self.core.call(&target, code, &request.input)?;
            self.after_call(&target, &reply);
            Ok(reply)
        });
        match result {
            Ok(reply) => {
                let o = reply.outcome;
                call::response(o.result, &o.output, o.message.as_deref().unwrap_or(""))
            }
            Err(e) => {
                self.stats.handler(false);
                call::response(-e.errno(), b"", &e.to_string())
            }
        }
    }

    /// The object at `path`, if the caller may write it.
    fn resolve(&self, req: &Request, path: &[u8]) -> Result<Target> {
        let walked = self.core.walk(path)?;
        let shown = || String::from_utf8_lossy(path).into_owned();
        let (uid, gid) = (req.uid(), req.gid());
        for dir in &walked.dirs {
            if !permits(&file_attr(dir), uid, gid, AccessFlags::X_OK) {
                return Err(Error::AccessDenied(shown()));
            }
        }
        if !permits(&file_attr(&walked.inode), uid, gid, AccessFlags::W_OK) {
            return Err(Error::AccessDenied(shown()));
        }
        Ok(Target {
            ino: walked.inode.ino,
            entry: Some((walked.parent, walked.name)),
            path: Some(path.to_vec()),
            uid,
            may_shrink: true,
        })
    }

    /// Counts the call and drops the kernel's cached copies of what it changed.
    fn after_call(&self, target: &Target, reply: &CallReply) {
        self.stats.handler(reply.outcome.result >= 0);
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
            if self.writeback {
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

impl LunaFs {
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
            // Through the mount from another thread: the kernel sends us a setattr to the
            // size the store already has, on another worker thread. Waited for, so the
            // caller sees the new size once its call returns; bounded, so a mount with a
            // single worker thread (which would serve it only after this request) goes on.
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
