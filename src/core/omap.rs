//! Extended attributes. `user.<k>` is the object's omap entry `<k>` (the same map Lua
//! handlers will read and write); `trusted.*` and `security.*` are stored as plain xattrs
//! (the kernel enforces who may touch them); `system.*`, including POSIX ACLs, is refused with
//! EOPNOTSUPP so tools fall back to the mode bits.

use super::Core;
use crate::error::{Error, Result};
use crate::store::codec::Timestamp;
use crate::store::keys::Ino;

/// The kernel's limit for one xattr value.
pub const XATTR_SIZE_MAX: usize = 65_536;

const USER: &[u8] = b"user.";

/// setxattr's XATTR_CREATE / XATTR_REPLACE (both at once: always fails, as on ext4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Upsert,
    Create,
    Replace,
    Never,
}

/// Where an xattr lives: `user.K` is omap key `K`; `trusted.*`/`security.*` are plain
/// xattrs, stored under their full name.
pub(super) enum XName<'a> {
    Omap(&'a [u8]),
    Plain(&'a [u8]),
}

/// The xattr name as the kernel hands it; other namespaces (`system.*`, ...) are EOPNOTSUPP.
pub(super) fn parse(name: &[u8]) -> Result<XName<'_>> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if let Some(key) = name.strip_prefix(USER) {
        if key.is_empty() {
            return Err(Error::InvalidArgument(shown()));
        }
        return Ok(XName::Omap(key));
    }
    if name.starts_with(b"trusted.") || name.starts_with(b"security.") {
        return Ok(XName::Plain(name));
    }
    Err(Error::Unsupported(format!("xattr {}", shown())))
}

impl Core {
    /// setxattr(2) by `uid` (the event's userIdentity).
    pub fn setxattr(
        &self,
        uid: u32,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: SetMode,
    ) -> Result<()> {
        let xname = parse(name)?;
        let shown = || String::from_utf8_lossy(name).into_owned();
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::ValueTooLarge(shown(), value.len()));
        }
        let _held = self.locks.lock(&[ino]);
        self.transact("setxattr", || {
            let mut txn = self.txn();
            let inode = txn.modify(ino)?;
            let exists = self.get_raw(ino, &xname)?.is_some();
            match (mode, exists) {
                (SetMode::Create | SetMode::Never, true) => return Err(Error::Exists(shown())),
                (SetMode::Replace | SetMode::Never, false) => return Err(Error::NoAttr(shown())),
                _ => {}
            }
            inode.ctime = Timestamp::now();
            let inode = inode.clone();
            match xname {
                XName::Omap(k) => txn.batch.put_omap(ino, k, value),
                XName::Plain(n) => txn.batch.put_xattr(ino, n, value),
            }
            let queued = self.metadata_event(&mut txn.batch, &inode, &xname, Some(value), uid)?;
            txn.commit()?;
            self.queued(queued);
            Ok(())
        })
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let xname = parse(name)?;
        let shown = || String::from_utf8_lossy(name).into_owned();
        let value = self.get_raw(ino, &xname)?.ok_or_else(|| {
            // An absent attribute of an absent inode is ENOENT, not ENODATA.
            match self.store.inode(ino) {
                Ok(Some(_)) => Error::NoAttr(shown()),
                _ => Error::NotFound(format!("inode {ino}")),
            }
        })?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::ValueTooLarge(shown(), value.len()));
        }
        Ok(value)
    }

    /// All xattr names of the inode, each followed by a NUL, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        self.getattr(ino)?;
        let mut out = Vec::new();
        for key in self.store.omap_keys(ino)? {
            out.extend_from_slice(USER);
            out.extend_from_slice(&key);
            out.push(0);
        }
        for name in self.store.xattr_names(ino)? {
            out.extend_from_slice(&name);
            out.push(0);
        }
        Ok(out)
    }

    /// removexattr(2) by `uid`.
    pub fn removexattr(&self, uid: u32, ino: Ino, name: &[u8]) -> Result<()> {
        let xname = parse(name)?;
        let _held = self.locks.lock(&[ino]);
        self.transact("removexattr", || {
            let mut txn = self.txn();
            let inode = txn.modify(ino)?;
            if self.get_raw(ino, &xname)?.is_none() {
                return Err(Error::NoAttr(String::from_utf8_lossy(name).into_owned()));
            }
            inode.ctime = Timestamp::now();
            let inode = inode.clone();
            match xname {
                XName::Omap(k) => txn.batch.delete_omap(ino, k),
                XName::Plain(n) => txn.batch.delete_xattr(ino, n),
            }
            let queued = self.metadata_event(&mut txn.batch, &inode, &xname, None, uid)?;
            txn.commit()?;
            self.queued(queued);
            Ok(())
        })
    }

    /// `ObjectMetadata:Set` for setting (`Some`) or removing attribute `name` of a watched
    /// object: the omap it carries is the one this change leaves.
    fn metadata_event(
        &self,
        batch: &mut crate::store::Batch<'_>,
        inode: &crate::store::codec::Inode,
        name: &XName<'_>,
        value: Option<&[u8]>,
        uid: u32,
    ) -> Result<super::events::Enqueued> {
        if !self.watches(inode) {
            return Ok(super::events::Enqueued::NONE);
        }
        let mut omap = self.store.omap_entries(inode.ino)?;
        if let XName::Omap(k) = name {
            omap.retain(|(key, _)| key != k);
            if let Some(v) = value {
                let at = omap.partition_point(|(key, _)| key.as_slice() < *k);
                omap.insert(at, (k.to_vec(), v.to_vec()));
            }
        }
        self.queue_metadata(batch, inode, omap, uid, None)
    }

    fn get_raw(&self, ino: Ino, name: &XName<'_>) -> Result<Option<Vec<u8>>> {
        match name {
            XName::Omap(k) => self.store.omap_get(ino, k),
            XName::Plain(n) => self.store.xattr_get(ino, n),
        }
    }
}
