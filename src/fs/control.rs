//! The hidden `/.lunafs` control directory: a small virtual tree answered by the adapter,
//! never stored. It is reachable by name from the root but not listed there, and nothing in it
//! can be created, renamed or removed through the filesystem.
//!
//! For now it holds `version` (what this lunafs is and which store format it speaks); the
//! class, topic and stats files of later issues join it here.

use std::time::SystemTime;

use fuser::{FileAttr, FileType, INodeNo};

use crate::core::FIRST_VIRTUAL_INO;
use crate::error::{Error, Result};
use crate::store::keys::Ino;
use crate::store::schema::{CHUNK_SIZE, SCHEMA_VERSION};

pub const DIR_INO: Ino = FIRST_VIRTUAL_INO;
pub const VERSION_INO: Ino = FIRST_VIRTUAL_INO + 1;

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
            VERSION_INO => (FileType::RegularFile, 0o444, 1, self.version.len() as u64),
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
            _ => Err(Error::NotFound(String::from_utf8_lossy(name).into_owned())),
        }
    }

    /// Entries of a control directory (without `.` and `..`).
    pub fn entries(&self, ino: Ino) -> Result<Vec<(Ino, FileType, &'static [u8])>> {
        match ino {
            DIR_INO => Ok(vec![(VERSION_INO, FileType::RegularFile, b"version")]),
            _ => Err(Error::NotDir(format!("control inode {ino}"))),
        }
    }

    pub fn read(&self, ino: Ino, offset: u64, len: u32) -> Result<Vec<u8>> {
        let data = match ino {
            VERSION_INO => &self.version,
            _ => return Err(Error::IsDir(format!("control inode {ino}"))),
        };
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(len as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }
}
