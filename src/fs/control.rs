//! The hidden `/.lunafs` control directory: a small virtual tree answered by the adapter,
//! never stored. It is reachable by name from the root but not listed there, and nothing in it
//! can be created, renamed or removed through the filesystem.
//!
//! It holds `version` (what this lunafs is and which store format it speaks) and `stats`
//! (counters, see `fs::stats`); the class and topic files of later issues join it here.
//! Files are generated at open and read with direct I/O, so their size shows as 0.

use std::time::SystemTime;

use fuser::{FileAttr, FileType, INodeNo};

use crate::core::FIRST_VIRTUAL_INO;
use crate::error::{Error, Result};
use crate::store::keys::Ino;
use crate::store::schema::{CHUNK_SIZE, SCHEMA_VERSION};

pub const DIR_INO: Ino = FIRST_VIRTUAL_INO;
pub const VERSION_INO: Ino = FIRST_VIRTUAL_INO + 1;
/// Request counters and store facts as JSON, generated at each open (by the adapter, which
/// owns the counters).
pub const STATS_INO: Ino = FIRST_VIRTUAL_INO + 2;

pub struct Control {
    since: SystemTime,
    uid: u32,
    gid: u32,
    version: Vec<u8>,
}

impl Control {
    pub fn new(uid: u32, gid: u32) -> Self {
        Control {
            since: SystemTime::now(),
            uid,
            gid,
            version: format!(
                "lunafs {}\nschema {SCHEMA_VERSION}\nchunk_size {CHUNK_SIZE}\n",
                env!("CARGO_PKG_VERSION")
            )
            .into_bytes(),
        }
    }

    pub fn owns(ino: Ino) -> bool {
        ino >= FIRST_VIRTUAL_INO
    }

    pub fn attr(&self, ino: Ino) -> Result<FileAttr> {
        let (kind, perm, nlink, size) = match ino {
            DIR_INO => (FileType::Directory, 0o555, 2, 0),
            VERSION_INO | STATS_INO => (FileType::RegularFile, 0o444, 1, 0),
            _ => return Err(Error::NotFound(format!("control inode {ino}"))),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.since,
            mtime: self.since,
            ctime: self.since,
            crtime: self.since,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<FileAttr> {
        match (parent, name) {
            (DIR_INO, b"version") => self.attr(VERSION_INO),
            (DIR_INO, b"stats") => self.attr(STATS_INO),
            _ => Err(Error::NotFound(String::from_utf8_lossy(name).into_owned())),
        }
    }

    /// Entries of a control directory (without `.` and `..`).
    pub fn entries(&self, ino: Ino) -> Result<Vec<(Ino, FileType, &'static [u8])>> {
        match ino {
            DIR_INO => Ok(vec![
                (STATS_INO, FileType::RegularFile, b"stats"),
                (VERSION_INO, FileType::RegularFile, b"version"),
            ]),
            _ => Err(Error::NotDir(format!("control inode {ino}"))),
        }
    }

    /// The contents of a static control file.
    pub fn contents(&self, ino: Ino) -> Result<Vec<u8>> {
        match ino {
            VERSION_INO => Ok(self.version.clone()),
            _ => Err(Error::IsDir(format!("control inode {ino}"))),
        }
    }
}

/// The part of `data` a read of `len` bytes at `offset` returns.
pub fn slice(data: &[u8], offset: u64, len: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let end = start.saturating_add(len as usize).min(data.len());
    &data[start..end]
}
