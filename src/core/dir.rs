//! The namespace: lookup, create, mkdir, mknod, symlink, link, unlink, rmdir, rename, readdir.
//!
//! Bucket rules live here: the root holds only directories (the buckets) and never the control
//! directory's name; renames and links never cross buckets (EXDEV). Everything else is the
//! POSIX behaviour of one local filesystem, including nlink and timestamp updates.

use super::events::Enqueued;
use super::{Core, Ctx, Name, Txn, ROOT};
use crate::error::{Error, Result};
use crate::store::codec::{Dentry, Inode, Kind, Timestamp};
use crate::store::keys::Ino;

/// The most names one inode (or subdirectories one directory) may have, as on ext4.
const LINK_MAX: u32 = 65_000;

/// How a rename treats an existing target (renameat2 flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// The result of resolving a path from the mount root.
#[derive(Debug, Clone)]
pub struct Walked {
    /// Every directory passed through, the root first (for search-permission checks).
    pub dirs: Vec<Inode>,
    pub parent: Ino,
    pub name: Name,
    pub inode: Inode,
}

impl Core {
    /// Resolves `bucket/key` (a path from the mount root; empty and `.` components are
    /// skipped, `..` and symlinks are refused: a call names one object exactly).
    pub fn walk(&self, path: &[u8]) -> Result<Walked> {
        let shown = || String::from_utf8_lossy(path).into_owned();
        let mut dirs = vec![self.getattr(ROOT)?];
        let mut parts = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .peekable();
        loop {
            let part = parts
                .next()
                .ok_or_else(|| Error::InvalidArgument(format!("path {:?}", shown())))?;
            if part == b".." {
                return Err(Error::InvalidArgument(format!("path {:?}: '..'", shown())));
            }
            let name = Name::new(part)?;
            let parent = dirs.last().expect("starts with the root");
            if parent.kind != Kind::Dir {
                return Err(Error::NotDir(shown()));
            }
            let parent_ino = parent.ino;
            let inode = self.lookup(parent_ino, &name)?;
            if parts.peek().is_none() {
                return Ok(Walked {
                    dirs,
                    parent: parent_ino,
                    name,
                    inode,
                });
            }
            dirs.push(inode);
        }
    }

    pub fn lookup(&self, parent: Ino, name: &Name) -> Result<Inode> {
        loop {
            let d = self.entry(parent, name)?;
            if let (Some(inode), _) = self.buffers.seen(d.ino, || self.store.inode(d.ino))? {
                return Ok(inode);
            }
            // Unlinked between the two reads: look again. A dentry that stays without its
            // inode is damage.
            if self.store.dentry(parent, name.as_bytes())? == Some(d) {
                return Err(Error::Corrupt(format!(
                    "entry {name} points to missing inode {}",
                    d.ino
                )));
            }
        }
    }

    /// The entries of a directory, in name order (without `.` and `..`).
    pub fn readdir(&self, ino: Ino) -> Result<Vec<(Vec<u8>, Dentry)>> {
        let dir = self.getattr(ino)?;
        if dir.kind != Kind::Dir {
            return Err(Error::NotDir(format!("inode {ino}")));
        }
        self.store.dentries(ino)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let inode = self.getattr(ino)?;
        if inode.kind != Kind::Symlink {
            return Err(Error::InvalidArgument(format!(
                "inode {ino} is not a symlink"
            )));
        }
        Ok(inode.target)
    }

    pub fn mkdir(&self, ctx: Ctx, parent: Ino, name: &Name, mode: u32) -> Result<Inode> {
        self.make_node(ctx, parent, name, Kind::Dir, mode, 0, &[])
    }

    pub fn create(&self, ctx: Ctx, parent: Ino, name: &Name, mode: u32) -> Result<Inode> {
        self.make_node(ctx, parent, name, Kind::File, mode, 0, &[])
    }

    pub fn symlink(&self, ctx: Ctx, parent: Ino, name: &Name, target: &[u8]) -> Result<Inode> {
        if target.is_empty() || target.len() > 4095 {
            return Err(Error::InvalidArgument(format!("symlink target of {name}")));
        }
        self.make_node(ctx, parent, name, Kind::Symlink, 0o777, 0, target)
    }

    /// mknod: regular files, FIFOs, sockets and device nodes. A device node is only its
    /// inode and `rdev` (as on ext4): opening it is the kernel's business (its driver, and
    /// the mount's `nodev`), never a request to lunafs. Only devices keep an `rdev`.
    pub fn mknod(&self, ctx: Ctx, parent: Ino, name: &Name, mode: u32, rdev: u32) -> Result<Inode> {
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => Kind::File,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFBLK => Kind::BlockDev,
            libc::S_IFCHR => Kind::CharDev,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "{name}: file type {other:#o}"
                )))
            }
        };
        let rdev = if matches!(kind, Kind::BlockDev | Kind::CharDev) {
            rdev
        } else {
            0
        };
        self.make_node(ctx, parent, name, kind, mode, rdev, &[])
    }

    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &Name,
        kind: Kind,
        mode: u32,
        rdev: u32,
        target: &[u8],
    ) -> Result<Inode> {
        if parent == ROOT {
            if kind != Kind::Dir {
                return Err(Error::NotPermitted(format!(
                    "{name}: only directories (buckets) can be created at the root"
                )));
            }
            if name.is_control_dir() {
                return Err(Error::Exists(name.to_string()));
            }
        }
        let _held = self.locks.lock(&[parent]);
        let inode = self.transact("create", || {
            self.make_node_txn(ctx, parent, name, (kind, mode, rdev), target)
        })?;
        if parent == ROOT {
            self.root_changed();
        }
        Ok(inode)
    }

    /// `make_node`'s transaction, under the parent's lock.
    fn make_node_txn(
        &self,
        ctx: Ctx,
        parent: Ino,
        name: &Name,
        (kind, mode, rdev): (Kind, u32, u32),
        target: &[u8],
    ) -> Result<Inode> {
        let mut txn = self.txn();
        let now = Timestamp::now();
        let dir = txn.modify(parent)?;
        if dir.kind != Kind::Dir {
            return Err(Error::NotDir(format!("inode {parent}")));
        }
        if dir.nlink == 0 {
            return Err(Error::NotFound(format!(
                "{name}: parent directory was removed"
            )));
        }
        if kind == Kind::Dir && dir.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks(parent));
        }
        let setgid = dir.perm as u32 & libc::S_ISGID != 0;
        let (dir_gid, dir_bucket) = (dir.gid, dir.bucket);
        if self.store.dentry(parent, name.as_bytes())?.is_some() {
            return Err(Error::Exists(name.to_string()));
        }
        let ino = self.alloc_ino()?;
        let mut perm = (mode & 0o7777) as u16;
        if setgid && kind == Kind::Dir {
            // A directory made inside a setgid directory is setgid too (BSD group semantics).
            perm |= libc::S_ISGID as u16;
        }
        let dir = txn.modify(parent)?;
        dir.mtime = now;
        dir.ctime = now;
        if kind == Kind::Dir {
            dir.nlink += 1;
        }
        let inode = Inode {
            ino,
            kind,
            perm,
            uid: ctx.uid,
            gid: if setgid { dir_gid } else { ctx.gid },
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: target.len() as u64,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev,
            parent,
            name: name.as_bytes().to_vec(),
            bucket: if parent == ROOT { ino } else { dir_bucket },
            target: target.to_vec(),
        };
        txn.batch
            .put_dentry(parent, name.as_bytes(), Dentry { ino, kind });
        txn.insert(inode.clone());
        txn.commit()?;
        Ok(inode)
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &Name) -> Result<Inode> {
        if newparent == ROOT {
            return Err(Error::NotPermitted(format!(
                "{newname}: only directories (buckets) can be created at the root"
            )));
        }
        let _held = self.locks.lock(&[ino, newparent]);
        let linked = || self.transact("link", || self.link_txn(ino, newparent, newname));
        let (inode, _) = self.buffers.seen(ino, || linked().map(Some))?;
        inode.ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    /// `link`'s transaction, under the locks of both inodes.
    fn link_txn(&self, ino: Ino, newparent: Ino, newname: &Name) -> Result<Inode> {
        let mut txn = self.txn();
        let now = Timestamp::now();
        let dir = txn.modify(newparent)?;
        if dir.kind != Kind::Dir {
            return Err(Error::NotDir(format!("inode {newparent}")));
        }
        if dir.nlink == 0 {
            return Err(Error::NotFound(format!(
                "{newname}: parent directory was removed"
            )));
        }
        let dir_bucket = dir.bucket;
        dir.mtime = now;
        dir.ctime = now;
        let inode = txn.modify(ino)?;
        if inode.kind == Kind::Dir {
            return Err(Error::NotPermitted(format!(
                "{newname}: hard link to a directory"
            )));
        }
        if inode.nlink == 0 {
            return Err(Error::NotFound(format!("inode {ino}")));
        }
        if inode.bucket != dir_bucket {
            return Err(Error::CrossBucket(newname.to_string()));
        }
        if inode.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks(ino));
        }
        inode.nlink += 1;
        inode.ctime = now;
        if inode.name.is_empty() {
            inode.parent = newparent;
            inode.name = newname.as_bytes().to_vec();
        }
        let (kind, result) = (inode.kind, inode.clone());
        if self.store.dentry(newparent, newname.as_bytes())?.is_some() {
            return Err(Error::Exists(newname.to_string()));
        }
        txn.batch
            .put_dentry(newparent, newname.as_bytes(), Dentry { ino, kind });
        txn.commit()?;
        Ok(result)
    }

    /// unlink(2) by the process with `uid` (the Delete event's userIdentity).
    pub fn unlink(&self, uid: u32, parent: Ino, name: &Name) -> Result<()> {
        self.transact("unlink", || self.unlink_txn(uid, parent, name))
    }

    fn unlink_txn(&self, uid: u32, parent: Ino, name: &Name) -> Result<()> {
        loop {
            let d = self.entry(parent, name)?;
            if d.kind == Kind::Dir {
                return Err(Error::IsDir(name.to_string()));
            }
            let _held = self.locks.lock(&[parent, d.ino]);
            // The parent's version first: the entry read after it is then checked too.
            let mut txn = self.txn();
            txn.get(parent)?;
            if self.store.dentry(parent, name.as_bytes())? != Some(d) {
                continue; // renamed or replaced while we took the locks
            }
            let now = Timestamp::now();
            let side = (parent, name.as_bytes(), d.ino);
            let queued = match (d.kind, txn.get(d.ino)?.nlink) {
                (Kind::File, 0 | 1) => self.queue_delete(&mut txn, side, uid)?,
                _ => Enqueued::NONE,
            };
            txn.batch.delete_dentry(parent, name.as_bytes());
            touch_dir(txn.modify(parent)?, now, 0);
            self.drop_link(&mut txn, side, now)?;
            txn.commit()?;
            self.queued(queued);
            return Ok(());
        }
    }

    pub fn rmdir(&self, parent: Ino, name: &Name) -> Result<()> {
        self.transact("rmdir", || self.rmdir_txn(parent, name))?;
        if parent == ROOT {
            self.root_changed();
        }
        Ok(())
    }

    fn rmdir_txn(&self, parent: Ino, name: &Name) -> Result<()> {
        loop {
            let d = self.entry(parent, name)?;
            if d.kind != Kind::Dir {
                return Err(Error::NotDir(name.to_string()));
            }
            let _held = self.locks.lock(&[parent, d.ino]);
            // Versions first: the entries read after them are then checked too.
            let mut txn = self.txn();
            txn.get(parent)?;
            txn.get(d.ino)?;
            if self.store.dentry(parent, name.as_bytes())? != Some(d) {
                continue;
            }
            if self.store.has_dentries(d.ino)? {
                return Err(Error::NotEmpty(name.to_string()));
            }
            let now = Timestamp::now();
            txn.batch.delete_dentry(parent, name.as_bytes());
            touch_dir(txn.modify(parent)?, now, -1);
            txn.purge(d.ino)?;
            return txn.commit();
        }
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &Name,
        newparent: Ino,
        newname: &Name,
        mode: RenameMode,
    ) -> Result<()> {
        self.rename_as(0, parent, name, newparent, newname, mode)
    }

    /// `rename` by the process with `uid` (the events' userIdentity).
    pub fn rename_as(
        &self,
        uid: u32,
        parent: Ino,
        name: &Name,
        newparent: Ino,
        newname: &Name,
        mode: RenameMode,
    ) -> Result<()> {
        let _cross = (parent != newparent).then(|| self.cross_dir_rename.lock());
        let queued = self.transact("rename", || loop {
            let src = self.entry(parent, name)?;
            let dst = self.store.dentry(newparent, newname.as_bytes())?;
            let mut inos = vec![parent, newparent, src.ino];
            inos.extend(dst.map(|d| d.ino));
            let _held = self.locks.lock(&inos);
            // Both directories' versions first: the entries read after them are checked too.
            let mut txn = self.txn();
            txn.get(parent)?;
            txn.get(newparent)?;
            if self.store.dentry(parent, name.as_bytes())? != Some(src)
                || self.store.dentry(newparent, newname.as_bytes())? != dst
            {
                continue;
            }
            let names = (name, newname);
            return self.rename_locked(txn, uid, (parent, newparent), names, (src, dst), mode);
        })?;
        self.queued(queued);
        if parent == ROOT || newparent == ROOT {
            self.root_changed();
        }
        Ok(())
    }

    /// The rename in `txn` (which has read both directories), under the locks of every inode
    /// it changes; returns the events it queued.
    fn rename_locked(
        &self,
        mut txn: Txn<'_>,
        uid: u32,
        (parent, newparent): (Ino, Ino),
        (name, newname): (&Name, &Name),
        (src, dst): (Dentry, Option<Dentry>),
        mode: RenameMode,
    ) -> Result<Enqueued> {
        self.check_same_bucket(&mut txn, parent, src, newparent, newname)?;
        if let (RenameMode::Exchange, Some(d)) = (mode, dst) {
            self.check_same_bucket(&mut txn, newparent, d, parent, name)?;
        }
        match (mode, dst) {
            (RenameMode::NoReplace, Some(_)) => return Err(Error::Exists(newname.to_string())),
            (RenameMode::Exchange, None) => return Err(Error::NotFound(newname.to_string())),
            // Two names of one inode: POSIX says rename does nothing.
            (RenameMode::Replace, Some(d)) if d.ino == src.ino => return Ok(Enqueued::NONE),
            _ => {}
        }
        if src.kind == Kind::Dir && parent != newparent {
            self.check_not_into_itself(&mut txn, src.ino, newparent, name)?;
            if txn.get(newparent)?.nlink >= LINK_MAX {
                return Err(Error::TooManyLinks(newparent));
            }
        }
        let now = Timestamp::now();
        txn.modify(src.ino)?.ctime = now;
        touch_dir(txn.modify(parent)?, now, 0);
        touch_dir(txn.modify(newparent)?, now, 0);

        if let (RenameMode::Exchange, Some(d)) = (mode, dst) {
            if d.kind == Kind::Dir && parent != newparent {
                self.check_not_into_itself(&mut txn, d.ino, parent, newname)?;
            }
            txn.modify(d.ino)?.ctime = now;
            let queued = self.queue_exchange(
                &mut txn,
                (parent, name.as_bytes(), src.ino),
                (newparent, newname.as_bytes(), d.ino),
                uid,
            )?;
            txn.batch.put_dentry(parent, name.as_bytes(), d);
            txn.batch.put_dentry(newparent, newname.as_bytes(), src);
            move_entry(&mut txn, src, parent, (newparent, newname))?;
            move_entry(&mut txn, d, newparent, (parent, name))?;
            txn.commit()?;
            return Ok(queued);
        }

        if let Some(d) = dst {
            match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                (true, false) => return Err(Error::NotDir(newname.to_string())),
                (false, true) => return Err(Error::IsDir(newname.to_string())),
                (true, true) => {
                    txn.get(d.ino)?;
                    if self.store.has_dentries(d.ino)? {
                        return Err(Error::NotEmpty(newname.to_string()));
                    }
                    touch_dir(txn.modify(newparent)?, now, -1);
                    txn.purge(d.ino)?;
                }
                (false, false) => {
                    self.drop_link(&mut txn, (newparent, newname.as_bytes(), d.ino), now)?;
                }
            }
        }
        let queued = self.queue_rename(
            &mut txn,
            (parent, name.as_bytes(), src.ino),
            (newparent, newname.as_bytes()),
            uid,
        )?;
        txn.batch.delete_dentry(parent, name.as_bytes());
        txn.batch.put_dentry(newparent, newname.as_bytes(), src);
        move_entry(&mut txn, src, parent, (newparent, newname))?;
        txn.commit()?;
        Ok(queued)
    }

    /// Refuses a rename that would move `d` across buckets or put a non-bucket at the root.
    fn check_same_bucket(
        &self,
        txn: &mut Txn<'_>,
        from: Ino,
        d: Dentry,
        to: Ino,
        to_name: &Name,
    ) -> Result<()> {
        if to == ROOT && d.kind != Kind::Dir {
            return Err(Error::NotPermitted(format!(
                "{to_name}: only directories (buckets) can be at the root"
            )));
        }
        if to == ROOT && to_name.is_control_dir() {
            return Err(Error::Exists(to_name.to_string()));
        }
        let crosses = match (from == ROOT, to == ROOT) {
            (true, true) => false, // renaming a bucket
            (false, false) => txn.get(from)?.bucket != txn.get(to)?.bucket,
            _ => true, // a bucket into a bucket, or a directory out to the root
        };
        if crosses {
            return Err(Error::CrossBucket(to_name.to_string()));
        }
        Ok(())
    }

    /// A directory may not move below itself (the kernel checks this too, on its dcache).
    /// The ancestors are read through `txn`: a rename elsewhere that moves one of them makes
    /// the commit fail its check.
    fn check_not_into_itself(
        &self,
        txn: &mut Txn<'_>,
        dir: Ino,
        newparent: Ino,
        name: &Name,
    ) -> Result<()> {
        let mut cur = newparent;
        while cur != ROOT {
            if cur == dir {
                return Err(Error::InvalidArgument(format!(
                    "{name}: cannot move a directory into itself"
                )));
            }
            cur = txn.get(cur)?.parent;
        }
        Ok(())
    }

    fn entry(&self, parent: Ino, name: &Name) -> Result<Dentry> {
        self.store
            .dentry(parent, name.as_bytes())?
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    /// Removes one name (`name` in `parent`) of a non-directory: the inode goes with its last
    /// name, unless it is still open, in which case it becomes an orphan until its last
    /// close. Returns whether the inode was purged (nothing of it may be written after that).
    pub(super) fn drop_link(
        &self,
        txn: &mut Txn<'_>,
        (parent, name, ino): super::events::Side<'_>,
        now: Timestamp,
    ) -> Result<bool> {
        let inode = txn.modify(ino)?;
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.ctime = now;
        if inode.parent == parent && inode.name == name {
            // Its primary name is gone; another link is found when one is needed.
            inode.name.clear();
        }
        if inode.nlink == 0 {
            if self.is_open(ino) {
                txn.batch.put_orphan(ino);
            } else {
                txn.purge(ino)?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// A directory's entries changed: new mtime/ctime and `nlink_delta` subdirectories.
pub(super) fn touch_dir(dir: &mut Inode, now: Timestamp, nlink_delta: i32) {
    dir.mtime = now;
    dir.ctime = now;
    dir.nlink = dir.nlink.saturating_add_signed(nlink_delta);
}

/// After entry `d` moved from directory `from` to `newname` in `to`: its primary name and,
/// for a directory, its `..` and both parents' link counts.
fn move_entry(txn: &mut Txn<'_>, d: Dentry, from: Ino, (to, newname): (Ino, &Name)) -> Result<()> {
    let inode = txn.modify(d.ino)?;
    inode.parent = to;
    inode.name = newname.as_bytes().to_vec();
    if d.kind != Kind::Dir || from == to {
        return Ok(());
    }
    let f = txn.modify(from)?;
    f.nlink = f.nlink.saturating_sub(1);
    txn.modify(to)?.nlink += 1;
    Ok(())
}
