//! `fs`: the FUSE adapter. Implements `fuser::Filesystem` by converting each request's
//! arguments once (names into `Name`, flags into core enums), calling `core`, and turning the
//! result into a reply; errors become errnos only through `Error::errno`. Holds no storage
//! layout and no policy beyond what the kernel protocol itself requires (handles, readdir
//! offsets, the virtual `/.lunafs` tree).
//!
//! Operations lunafs does not implement are listed in the README with their errno; fuser's
//! default (ENOSYS) makes the kernel fall back to its generic code for lseek(SEEK_DATA/HOLE),
//! copy_file_range, POSIX locks (kept local to this kernel), ioctl, poll and bmap.

pub mod attr;
pub mod call;
pub mod control;
pub mod handles;
pub mod invoke;
pub mod pool;
pub mod scripts;
pub mod stamps;
pub mod stats;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, warn};

use crate::config::MountConfig;
use crate::core::dir::RenameMode;
use crate::core::object::{SetAttr, TimeSet};
use crate::core::omap::SetMode;
use crate::core::{Core, Ctx, Name, ROOT};
use crate::error::{Error, Result};
use crate::store::codec::{Kind, Timestamp};
use crate::store::keys::Ino;
use attr::{file_attr, file_type};
use control::Control;
use handles::{Handle, Handles, Listed};
use stats::{json_str, Op, Stats};

pub struct LunaFs {
    core: Arc<Core>,
    handles: Handles,
    control: Control,
    /// How long the kernel may cache attributes and entries. On the embedded store every
    /// change comes through this one mount; on a shared one, changes of other mounts are
    /// invalidated as the store's watch reports them (`core::coherence`), and at worst seen
    /// after this long.
    ttl: Duration,
    writeback: bool,
    stats: Arc<Stats>,
    mountpoint: String,
    /// Tells the kernel to drop cached pages, attributes and entries that a handler call
    /// changed behind its back; set once the session exists.
    notifier: Arc<OnceLock<fuser::Notifier>>,
    /// What handler calls need of the mount, and the threads they run on.
    invoker: Arc<invoke::Invoker>,
    pool: pool::CallPool,
    /// The notification dispatcher's counters (for stats), once it runs.
    pub delivery: Option<Arc<crate::notify::Counters>>,
    /// Where the metrics exporter listens, if it runs (for stats).
    pub metrics: Option<std::net::SocketAddr>,
    /// Which files' cached pages are still good at their next open.
    stamps: stamps::Stamps,
}

impl LunaFs {
    /// Where the session's notifier goes once the session exists.
    pub fn notifier(&self) -> Arc<OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// The request counters (for the metrics exporter).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// What calls made outside a FUSE request (triggers) report their changes to.
    pub fn after_call(&self) -> Arc<dyn crate::core::call::AfterCall> {
        self.invoker.clone()
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn name(raw: &OsStr) -> Result<Name> {
    Name::new(raw.as_bytes())
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(from_kernel(t)),
    }
}

/// A time the kernel sent (sec, nsec), as fuser 0.18 hands it over: before 1970 it subtracts
/// the nanoseconds instead of adding them (its own TODO), so -1.25 s (sec -2, nsec 750000000)
/// arrives as 2.75 s before the epoch. Undone here.
fn from_kernel(t: std::time::SystemTime) -> Timestamp {
    match std::time::UNIX_EPOCH.duration_since(t) {
        Ok(before) if before.subsec_nanos() > 0 => Timestamp {
            sec: -(before.as_secs() as i64),
            nsec: before.subsec_nanos(),
        },
        _ => t.into(),
    }
}

const GENERATION: Generation = Generation(0);

/// The xattr holding a file's SELinux label.
const SELINUX_XATTR: &[u8] = b"security.selinux";

/// Control files are generated at open: direct I/O so the kernel neither caches them nor
/// trusts their (zero) size.
fn control_flags() -> FopenFlags {
    FopenFlags::FOPEN_DIRECT_IO
}

impl LunaFs {
    /// Counts a request on `ino` (and times it), unless it is monitoring's own.
    fn count(&self, op: Op, ino: Ino) -> Option<stats::Timing<'_>> {
        (!Control::is_monitoring(ino)).then(|| self.stats.call(op))
    }

    /// The errno for a failed request, counted and logged (EIO as a warning: it means
    /// trouble in the store; the rest are refusals the caller is meant to see).
    fn fail(&self, op: Op, e: &Error) -> Errno {
        let code = e.errno();
        self.stats.error(op, code);
        if code == libc::EIO {
            warn!(op = op.name(), error = %e, "request failed");
        } else {
            debug!(op = op.name(), error = %e, "request refused");
        }
        Errno::from_i32(code)
    }

    fn reply_xattr(&self, op: Op, reply: ReplyXattr, size: u32, r: Result<Vec<u8>>) {
        match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => {
                reply.error(self.fail(op, &Error::BufferTooSmall(v.len())))
            }
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(self.fail(op, &e)),
        }
    }

    /// The contents of `/.lunafs/stats`.
    fn stats_json(&self) -> Vec<u8> {
        let core = &self.core;
        let (backend, answers, took) = core.backend();
        // The dispatcher counts an event delivered or dropped after it has left the queue;
        // read in the other order, so an event never shows as both finished and pending.
        let delivery = self
            .delivery
            .as_ref()
            .map_or("null".into(), |c| c.to_json().to_string());
        let pending = core.events_pending().to_string();
        self.stats
            .to_json(&[
                ("store", json_str(&core.store_path().display().to_string())),
                ("backend", json_str(&backend)),
                ("backend_answers", answers.to_string()),
                ("backend_requests", core.backend_requests().to_string()),
                (
                    "backend_read_ms",
                    format!("{:.3}", took.as_secs_f64() * 1e3),
                ),
                ("leader", core.leads().to_string()),
                ("mountpoint", json_str(&self.mountpoint)),
                (
                    "metrics",
                    self.metrics
                        .map_or("null".into(), |a| json_str(&a.to_string())),
                ),
                ("store_bytes", core.store_bytes().to_string()),
                ("open_files", core.open_file_count().to_string()),
                ("events_queued", core.events_queued().to_string()),
                ("events_pending", pending),
                ("delivery", delivery),
            ])
            .into_bytes()
    }

    pub fn new(core: Arc<Core>, config: &MountConfig) -> Result<Self> {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let stats = Arc::new(Stats::new());
        let notifier = Arc::new(OnceLock::new());
        let mountpoint = config.mountpoint.display().to_string();
        let invoker = Arc::new(invoke::Invoker {
            core: core.clone(),
            stats: stats.clone(),
            notifier: notifier.clone(),
            writeback: config.writeback().into(),
            mountpoint: mountpoint.clone(),
        });
        let pool = pool::CallPool::new(config.call_threads)
            .map_err(|e| Error::io("starting the handler-call threads", e))?;
        Ok(LunaFs {
            core,
            handles: Handles::new(),
            control: Control::new(uid, gid),
            ttl: config.attr_timeout,
            writeback: config.writeback(),
            stats,
            mountpoint,
            notifier,
            invoker,
            pool,
            delivery: None,
            metrics: None,
            stamps: Default::default(),
        })
    }

    fn attr(&self, ino: Ino) -> Result<fuser::FileAttr> {
        if Control::owns(ino) {
            return self.control.attr(&self.core, ino);
        }
        Ok(file_attr(&self.core.getattr(ino)?))
    }

    fn lookup_attr(&self, parent: Ino, raw: &OsStr) -> Result<fuser::FileAttr> {
        if Control::owns(parent) {
            return self.control.lookup(&self.core, parent, raw.as_bytes());
        }
        let name = name(raw)?;
        if parent == ROOT && name.is_control_dir() {
            return self.control.attr(&self.core, control::DIR_INO);
        }
        Ok(file_attr(&self.core.lookup(parent, &name)?))
    }

    /// Refuses any change inside `/.lunafs` (the directory itself included).
    fn writable(&self, ino: Ino) -> Result<()> {
        if Control::owns(ino) {
            return Err(Error::NotPermitted("/.lunafs".into()));
        }
        Ok(())
    }

    fn reply_entry(&self, op: Op, reply: ReplyEntry, r: Result<crate::store::codec::Inode>) {
        match r {
            Ok(inode) => reply.entry(&self.ttl, &file_attr(&inode), GENERATION),
            Err(e) => reply.error(self.fail(op, &e)),
        }
    }

    fn listing(&self, ino: Ino) -> Result<Vec<Listed>> {
        let (parent, entries) = if Control::owns(ino) {
            let entries = self.control.entries(&self.core, ino)?;
            let listed: Vec<Listed> = entries
                .into_iter()
                .map(|(ino, kind, name)| Listed { ino, kind, name })
                .collect();
            let parent = if ino == control::DIR_INO {
                ROOT
            } else {
                control::DIR_INO
            };
            (parent, listed)
        } else {
            let dir = self.core.getattr(ino)?;
            let listed: Vec<Listed> = self
                .core
                .readdir(ino)?
                .into_iter()
                .map(|(name, d)| Listed {
                    ino: d.ino,
                    kind: file_type(d.kind),
                    name,
                })
                .collect();
            (dir.parent, listed)
        };
        let mut all = Vec::with_capacity(entries.len() + 2);
        all.push(Listed {
            ino,
            kind: fuser::FileType::Directory,
            name: b".".to_vec(),
        });
        all.push(Listed {
            ino: parent,
            kind: fuser::FileType::Directory,
            name: b"..".to_vec(),
        });
        all.extend(entries);
        Ok(all)
    }

    /// The listing of an open directory handle, taken when reading starts at offset 0.
    fn dir_listing(&self, fh: FileHandle, offset: u64) -> Result<Arc<Vec<Listed>>> {
        let handle = self.handles.get(fh.0).ok_or(Error::BadHandle(fh.0))?;
        let Handle::Dir { ino, listing } = &*handle else {
            return Err(Error::NotDir(format!("handle {}", fh.0)));
        };
        let mut cached = listing.lock();
        match &*cached {
            Some(l) if offset != 0 => Ok(l.clone()),
            _ => {
                let l = Arc::new(self.listing(*ino)?);
                *cached = Some(l.clone());
                Ok(l)
            }
        }
    }
}

impl fuser::Filesystem for LunaFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger requests mean fewer round trips for sequential I/O; 1 MiB is the kernel's
        // max_pages limit (256 pages).
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        if self.writeback {
            // The kernel gathers small writes in its page cache and sends them in large
            // requests; without it every write(2) is one read-modify-write of a chunk.
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                debug!(?flag, "kernel lacks FUSE capability");
                if flag == InitFlags::FUSE_WRITEBACK_CACHE {
                    self.writeback = false;
                    self.invoker.writeback.store(false, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.core.shutdown() {
            warn!(error = %e, "flushing the store at unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, raw: &OsStr, reply: ReplyEntry) {
        let _timing = (!Control::is_monitoring_lookup(parent.0, raw.as_bytes()))
            .then(|| self.stats.call(Op::Lookup));
        match self.lookup_attr(parent.0, raw) {
            Ok(attr) => reply.entry(&self.ttl, &attr, GENERATION),
            Err(e) => reply.error(self.fail(Op::Lookup, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _timing = self.count(Op::Getattr, ino.0);
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&self.ttl, &attr),
            Err(e) => reply.error(self.fail(Op::Getattr, &e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _timing = self.stats.call(Op::Setattr);
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        if Control::owns(ino.0) {
            // Only truncation of a script file being written (cp, shell `>`): it applies to
            // the buffers of its open handles, stored at close.
            let r = match (self.control.node(ino.0), &change) {
                (
                    Ok(node),
                    SetAttr {
                        size: Some(size),
                        mode: None,
                        uid: None,
                        gid: None,
                        ..
                    },
                ) if node.is_script() => self
                    .truncate_script(&node, *size)
                    .and_then(|_| self.attr(ino.0)),
                (Ok(_), _) => Err(Error::NotPermitted("/.lunafs".into())),
                (Err(e), _) => Err(e),
            };
            return match r {
                Ok(attr) => reply.attr(&Duration::ZERO, &attr),
                Err(e) => reply.error(self.fail(Op::Setattr, &e)),
            };
        }
        let r = self
            .writable(ino.0)
            .and_then(|_| self.core.setattr(ino.0, &change));
        match r {
            Ok(inode) => reply.attr(&self.ttl, &file_attr(&inode)),
            Err(e) => reply.error(self.fail(Op::Setattr, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _timing = self.stats.call(Op::Readlink);
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(self.fail(Op::Readlink, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        raw: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _timing = self.stats.call(Op::Mknod);
        let r = self.writable(parent.0).and_then(|_| {
            self.core
                .mknod(ctx(req), parent.0, &name(raw)?, mode & !umask, rdev)
        });
        self.reply_entry(Op::Mknod, reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        raw: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _timing = self.stats.call(Op::Mkdir);
        let r = self.writable(parent.0).and_then(|_| {
            self.core
                .mkdir(ctx(req), parent.0, &name(raw)?, mode & !umask)
        });
        self.reply_entry(Op::Mkdir, reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, raw: &OsStr, reply: ReplyEmpty) {
        let _timing = self.stats.call(Op::Unlink);
        let r = if Control::owns(parent.0) {
            self.control.remove(&self.core, parent.0, raw.as_bytes())
        } else {
            self.writable(parent.0)
                .and_then(|_| self.core.unlink(req.uid(), parent.0, &name(raw)?))
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Unlink, &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, raw: &OsStr, reply: ReplyEmpty) {
        let _timing = self.stats.call(Op::Rmdir);
        let r = self.writable(parent.0).and_then(|_| {
            let name = name(raw)?;
            if parent.0 == ROOT && name.is_control_dir() {
                return Err(Error::NotPermitted("/.lunafs".into()));
            }
            self.core.rmdir(parent.0, &name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Rmdir, &e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        raw: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _timing = self.stats.call(Op::Symlink);
        let r = self.writable(parent.0).and_then(|_| {
            self.core.symlink(
                ctx(req),
                parent.0,
                &name(raw)?,
                target.as_os_str().as_bytes(),
            )
        });
        self.reply_entry(Op::Symlink, reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        raw: &OsStr,
        newparent: INodeNo,
        newraw: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _timing = self.stats.call(Op::Rename);
        let r = (|| {
            self.writable(parent.0)?;
            self.writable(newparent.0)?;
            let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                RenameMode::Exchange
            } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                RenameMode::NoReplace
            } else if flags.is_empty() {
                RenameMode::Replace
            } else {
                return Err(Error::InvalidArgument(format!("rename flags {flags:?}")));
            };
            let (from, to) = (name(raw)?, name(newraw)?);
            if parent.0 == ROOT && from.is_control_dir() {
                return Err(Error::NotPermitted("/.lunafs".into()));
            }
            self.core
                .rename_as(req.uid(), parent.0, &from, newparent.0, &to, mode)
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Rename, &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newraw: &OsStr,
        reply: ReplyEntry,
    ) {
        let _timing = self.stats.call(Op::Link);
        let r = self
            .writable(ino.0)
            .and_then(|_| self.writable(newparent.0))
            .and_then(|_| self.core.link(ino.0, newparent.0, &name(newraw)?));
        self.reply_entry(Op::Link, reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _timing = self.count(Op::Open, ino.0);
        let r = (|| {
            if Control::owns(ino.0) {
                return Ok((self.open_control(ino.0, flags)?, control_flags()));
            }
            let inode = self.core.revalidate(ino.0)?;
            if inode.kind == Kind::Dir {
                return Err(Error::IsDir(format!("inode {}", ino.0)));
            }
            self.core.open_file(ino.0)?;
            let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
            if writing {
                self.core
                    .begin_write(ino.0, req.uid(), flags.0 & libc::O_TRUNC != 0)?;
            }
            // keep_cache only while the file is as this mount last saw it (close-to-open).
            let keep = match self.stamps.still_fresh(&inode) {
                true => FopenFlags::FOPEN_KEEP_CACHE,
                false => FopenFlags::empty(),
            };
            Ok((
                self.handles.insert(Handle::File {
                    ino: ino.0,
                    writing,
                }),
                keep,
            ))
        })();
        match r {
            Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(self.fail(Op::Open, &e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let timing = self.count(Op::Read, ino.0);
        let r = if Control::owns(ino.0) {
            match self.handles.get(fh.0).as_deref() {
                Some(Handle::Control { data }) => Ok(control::slice(data, offset, size).to_vec()),
                Some(Handle::Script { data, .. }) => {
                    Ok(control::slice(&data.lock(), offset, size).to_vec())
                }
                Some(Handle::Call { file }) => {
                    let started = timing.map(stats::Timing::hand_off);
                    return self.read_call(req, file, size, reply, started);
                }
                _ => Err(Error::BadHandle(fh.0)),
            }
        } else {
            self.core.read(ino.0, offset, size)
        };
        match r {
            Ok(data) => {
                self.stats.read(data.len());
                reply.data(&data)
            }
            Err(e) => reply.error(self.fail(Op::Read, &e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _timing = self.stats.call(Op::Write);
        // The offset is the kernel's: for O_APPEND it is the end of the file, taken under the
        // kernel's inode lock from a size that only this mount changes. Appending on our own
        // would misplace mmap writeback and ignore fcntl(F_SETFL) clearing O_APPEND.
        let r = if Control::owns(ino.0) {
            self.write_control(fh.0, offset, data)
        } else {
            self.core.write(ino.0, offset, data)
        };
        match r {
            Ok(n) => {
                self.stats.wrote(n);
                reply.written(n as u32)
            }
            Err(e) => reply.error(self.fail(Op::Write, &e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if let Some(handle) = self.handles.get(fh.0) {
            let r = match &*handle {
                // Any close(2) of a writing descriptor records the Put as it stands (held
                // until the last descriptor's release confirms it), so once close returns
                // the event survives kill -9.
                Handle::File { ino, writing: true } => self.core.flush_write(*ino, req.uid()),
                Handle::File { .. } => Ok(()),
                other => self.store_script(other),
            };
            if let Err(e) = r {
                return reply.error(self.fail(Op::Release, &e));
            }
        }
        // Every write is committed to the store (its WAL, in the kernel's page cache) before
        // it is acknowledged, and the kernel writes back dirty pages before sending FLUSH, so
        // when close() returns the data survives kill -9 of lunafs.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _timing = self.count(Op::Release, ino.0);
        let r = match self.handles.remove(fh.0).as_deref() {
            Some(Handle::File { ino, writing }) => {
                // The Put goes first: a file unlinked while open is gone after close_file.
                let put = match writing {
                    true => self.core.end_write(*ino),
                    false => Ok(()),
                };
                if *writing {
                    if let Ok(inode) = self.core.getattr(*ino) {
                        self.stamps.remember(&inode);
                    }
                }
                self.core.close_file(*ino).and(put)
            }
            // Normally stored at flush already; this catches a close without flush.
            Some(h @ Handle::Script { .. }) => self.store_script(h),
            Some(_) => Ok(()),
            None => Err(Error::BadHandle(fh.0)),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Release, &e)),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        let _timing = self.stats.call(Op::Fsync);
        match self.core.sync_file(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Fsync, &e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _timing = self.stats.call(Op::Opendir);
        let r = (|| {
            if !Control::owns(ino.0) && self.core.getattr(ino.0)?.kind != Kind::Dir {
                return Err(Error::NotDir(format!("inode {}", ino.0)));
            }
            Ok(self.handles.insert(Handle::Dir {
                ino: ino.0,
                listing: Default::default(),
            }))
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(self.fail(Op::Opendir, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _timing = self.stats.call(Op::Readdir);
        match self.dir_listing(fh, offset) {
            Ok(listing) => {
                for (i, e) in listing.iter().enumerate().skip(offset as usize) {
                    if reply.add(
                        INodeNo(e.ino),
                        i as u64 + 1,
                        e.kind,
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(self.fail(Op::Readdir, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _timing = self.stats.call(Op::Readdir);
        match self.dir_listing(fh, offset) {
            Ok(listing) => {
                for (i, e) in listing.iter().enumerate().skip(offset as usize) {
                    let attr = match self.attr(e.ino) {
                        Ok(a) => a,
                        Err(_) => continue, // removed since the listing was taken
                    };
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(
                        INodeNo(e.ino),
                        i as u64 + 1,
                        name,
                        &self.ttl,
                        &attr,
                        GENERATION,
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(self.fail(Op::Readdir, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        let _timing = self.stats.call(Op::Fsync);
        match self.core.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Fsync, &e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _timing = self.stats.call(Op::Statfs);
        match self.core.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(self.fail(Op::Statfs, &e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        raw: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let timing = self.stats.call(Op::Setxattr);
        let mode = match (
            flags & libc::XATTR_CREATE != 0,
            flags & libc::XATTR_REPLACE != 0,
        ) {
            (true, true) => SetMode::Never,
            (true, false) => SetMode::Create,
            (false, true) => SetMode::Replace,
            (false, false) => SetMode::Upsert,
        };
        if let Err(e) = self.writable(ino.0) {
            return reply.error(self.fail(Op::Setxattr, &e));
        }
        if let Some((class, method)) = invoke::xattr_call(raw.as_bytes()) {
            let job = invoke::XattrCall {
                invoker: self.invoker.clone(),
                ctx: ctx(req),
                ino: ino.0,
                class,
                method,
                input: value.to_vec(),
                reply,
                started: timing.hand_off(),
            };
            return self.pool.submit(Box::new(job));
        }
        match self
            .core
            .setxattr(req.uid(), ino.0, raw.as_bytes(), value, mode)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Setxattr, &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, raw: &OsStr, size: u32, reply: ReplyXattr) {
        let _timing = self.stats.call(Op::Getxattr);
        let r = if Control::owns(ino.0) {
            Err(Error::NoAttr(raw.to_string_lossy().into_owned()))
        } else {
            self.core.getxattr(ino.0, raw.as_bytes())
        };
        let r = match r {
            // `ls -l` asks every entry for its SELinux label; ENODATA makes it ask again for the
            // next one (one round trip each: 100,000 entries took 5 s), EOPNOTSUPP tells it this
            // filesystem carries none, and it stops asking. A label someone did set is returned.
            Err(Error::NoAttr(_)) if raw.as_bytes() == SELINUX_XATTR => Err(Error::Unsupported(
                "lunafs keeps no SELinux labels (only ones set explicitly)".into(),
            )),
            r => r,
        };
        self.reply_xattr(Op::Getxattr, reply, size, r);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _timing = self.stats.call(Op::Listxattr);
        let r = if Control::owns(ino.0) {
            Ok(Vec::new())
        } else {
            self.core.listxattr(ino.0)
        };
        self.reply_xattr(Op::Listxattr, reply, size, r);
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, raw: &OsStr, reply: ReplyEmpty) {
        let _timing = self.stats.call(Op::Removexattr);
        let r = self
            .writable(ino.0)
            .and_then(|_| self.core.removexattr(req.uid(), ino.0, raw.as_bytes()));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Removexattr, &e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _timing = self.stats.call(Op::Access);
        // With default_permissions the kernel decides access(2) itself; this answers only
        // if a kernel asks anyway, by the same mode-bit rules.
        match self.attr(ino.0) {
            Ok(attr) => {
                if permits(&attr, req.uid(), req.gid(), mask) {
                    reply.ok()
                } else {
                    reply.error(Errno::EACCES)
                }
            }
            Err(e) => reply.error(self.fail(Op::Access, &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        raw: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _timing = self.stats.call(Op::Create);
        if Control::owns(parent.0) {
            let r = self.create_script(parent.0, raw.as_bytes());
            return match r {
                Ok((attr, fh)) => reply.created(
                    &Duration::ZERO,
                    &attr,
                    GENERATION,
                    FileHandle(fh),
                    control_flags(),
                ),
                Err(e) => reply.error(self.fail(Op::Create, &e)),
            };
        }
        let r = (|| {
            self.writable(parent.0)?;
            let inode = self
                .core
                .create(ctx(req), parent.0, &name(raw)?, mode & !umask)?;
            self.core.open_file(inode.ino)?;
            self.core.begin_write(inode.ino, req.uid(), true)?;
            let fh = self.handles.insert(Handle::File {
                ino: inode.ino,
                writing: true,
            });
            Ok((inode, fh))
        })();
        match r {
            Ok((inode, fh)) => {
                self.stamps.remember(&inode);
                reply.created(
                    &self.ttl,
                    &file_attr(&inode),
                    GENERATION,
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                )
            }
            Err(e) => reply.error(self.fail(Op::Create, &e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _timing = self.stats.call(Op::Fallocate);
        let r = if mode != 0 {
            // Punching holes and collapsing ranges are not supported (yet).
            Err(Error::Unsupported(format!("fallocate mode {mode:#x}")))
        } else {
            self.core.allocate(ino.0, offset.saturating_add(length))
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(Op::Fallocate, &e)),
        }
    }
}

fn permits(attr: &fuser::FileAttr, uid: u32, gid: u32, mask: AccessFlags) -> bool {
    let want = mask.bits() as u16 & 0o7;
    if want == 0 {
        return true;
    }
    let perm = attr.perm;
    if uid == 0 {
        // root may read and write anything, and execute what anyone may execute.
        return want & 0o1 == 0 || perm & 0o111 != 0 || attr.kind == fuser::FileType::Directory;
    }
    let bits = if uid == attr.uid {
        perm >> 6
    } else if gid == attr.gid {
        perm >> 3
    } else {
        perm
    } & 0o7;
    bits & want == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_1970_from_the_kernel_keep_their_nanoseconds() {
        // What fuser makes of the kernel's (sec -315521755, nsec 123456789).
        let sent = std::time::UNIX_EPOCH - std::time::Duration::new(315_521_755, 123_456_789);
        let t = from_kernel(sent);
        assert_eq!((t.sec, t.nsec), (-315_521_755, 123_456_789));
        let whole = std::time::UNIX_EPOCH - std::time::Duration::from_secs(7);
        assert_eq!((from_kernel(whole).sec, from_kernel(whole).nsec), (-7, 0));
        let after = std::time::UNIX_EPOCH + std::time::Duration::new(5, 9);
        assert_eq!((from_kernel(after).sec, from_kernel(after).nsec), (5, 9));
    }
}
