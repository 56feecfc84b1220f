//! The adapter's side of `/.lunafs` files: opening them (a snapshot to read, a buffer to
//! write, a call exchange), writing, and storing class and module files at close. What the
//! tree holds and how names map to classes and modules is `control`'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{FileAttr, OpenFlags, ReplyData, Request};

use parking_lot::Mutex;

use super::control::Node;
use super::handles::Handle;
use super::invoke::{CallFile, CallRead, FileCall};
use super::LunaFs;
use crate::error::{Error, Result};
use crate::store::keys::Ino;

/// Largest class or module source: far beyond any script, small enough that a write at a
/// huge offset cannot make the daemon allocate without bound.
const MAX_SCRIPT: u64 = 16 << 20;

impl LunaFs {
    /// open(2) of a control file; returns the handle number.
    pub(super) fn open_control(&self, ino: Ino, flags: OpenFlags) -> Result<u64> {
        let node = self.control.node(ino)?;
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let handle = match node {
            Node::Call => Handle::Call {
                file: Default::default(),
            },
            Node::Stats if !writing => Handle::Control {
                data: self.stats_json(),
            },
            ref script if writing && script.is_script() => {
                // Edited in place: start from what is stored. (The kernel sends O_TRUNC as a
                // separate setattr, which `truncate_script` applies.)
                let data = if flags.0 & libc::O_TRUNC != 0 {
                    Vec::new()
                } else {
                    self.control.contents(&self.core, script)?
                };
                Handle::Script {
                    node,
                    data: parking_lot::Mutex::new(data),
                    dirty: (flags.0 & libc::O_TRUNC != 0).into(),
                }
            }
            ref other if !writing => Handle::Control {
                data: self.control.contents(&self.core, other)?,
            },
            _ => return Err(Error::NotPermitted("/.lunafs: read-only file".into())),
        };
        Ok(self.handles.insert(handle))
    }

    /// create(2) of `NAME.lua` in `/.lunafs/classes` or `MODULE@VERSION.lua` in
    /// `/.lunafs/packages`: nothing is stored until the file is closed.
    pub(super) fn create_script(&self, parent: Ino, name: &[u8]) -> Result<(FileAttr, u64)> {
        let node = self.control.new_node(parent, name)?;
        let ino = self.control.ino(node.clone());
        // Not dirty until written: a shell's `>` closes a duplicate of the new file (a
        // flush) before it writes, and an empty class would replace nothing useful.
        let fh = self.handles.insert(Handle::Script {
            node,
            data: Default::default(),
            dirty: false.into(),
        });
        Ok((self.control.attr(&self.core, ino)?, fh))
    }

    /// truncate(2) of a script file: applies to every open buffer of it. (The kernel's
    /// truncate for open(O_TRUNC) carries no file handle.)
    pub(super) fn truncate_script(&self, node: &Node, size: u64) -> Result<()> {
        if size > MAX_SCRIPT {
            return Err(Error::FileTooBig(size));
        }
        for handle in self.handles.all() {
            if let Handle::Script {
                node: n,
                data,
                dirty,
            } = &*handle
            {
                if n == node {
                    data.lock().resize(size as usize, 0);
                    dirty.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// read(2) of `/.lunafs/call`: hands the call a complete request is waiting for to
    /// the call pool (run as the reader: the file's opener), which answers with the first
    /// bytes of the response; otherwise answers with the next bytes of the response.
    pub(super) fn read_call(
        &self,
        req: &Request,
        file: &Arc<Mutex<CallFile>>,
        size: u32,
        reply: ReplyData,
        started: Option<super::stats::Started>,
    ) {
        let start = file.lock().read(size, reply);
        if let CallRead::Start(requests, reply) = start {
            let job = FileCall {
                invoker: self.invoker.clone(),
                ctx: super::ctx(req),
                file: file.clone(),
                requests: requests.into(),
                responses: Vec::new(),
                size,
                reply: Some(reply),
                started,
            };
            self.pool.submit(Box::new(job));
        } else if let Some(started) = started {
            self.stats.answered(started);
        }
    }

    /// write(2) to a control file.
    pub(super) fn write_control(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        match self.handles.get(fh).as_deref() {
            Some(Handle::Script {
                data: buf, dirty, ..
            }) => {
                let end = offset.saturating_add(data.len() as u64);
                if end > MAX_SCRIPT {
                    return Err(Error::FileTooBig(end));
                }
                let (start, end) = (offset as usize, end as usize);
                let mut buf = buf.lock();
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[start..end].copy_from_slice(data);
                dirty.store(true, Ordering::Relaxed);
                Ok(data.len())
            }
            Some(Handle::Call { file }) => {
                file.lock().write(data)?;
                Ok(data.len())
            }
            Some(_) => Err(Error::NotPermitted("/.lunafs: read-only file".into())),
            None => Err(Error::BadHandle(fh)),
        }
    }

    /// Stores a written class or module file (flush and release); other handles: nothing.
    /// A refused source is logged with its message and fails the close with EINVAL.
    pub(super) fn store_script(&self, handle: &Handle) -> Result<()> {
        let Handle::Script { node, data, dirty } = handle else {
            return Ok(());
        };
        if !dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let data = data.lock();
        self.control
            .store(&self.core, node, &data)
            .inspect_err(|e| {
                // Still unstored: every later close of the file reports the refusal too.
                // (A child that inherited the descriptor may close it first, and its close
                // must not leave the writer's close to succeed.)
                dirty.store(true, Ordering::Relaxed);
                tracing::warn!(file = ?node, error = %e, "refused a /.lunafs file");
            })
    }
}
