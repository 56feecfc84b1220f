//! Conversion of store inodes to the kernel's attribute struct. The only place that knows how
//! an `Inode` looks to `stat(2)`.

use fuser::{FileAttr, FileType, INodeNo};

use crate::store::codec::{Inode, Kind};
/// st_blksize: 128 KiB, eight chunks per request.
const PREFERRED_IO_SIZE: u32 = 128 * 1024;

pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::CharDev => FileType::CharDevice,
    }
}

pub fn file_attr(inode: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(inode.ino),
        size: inode.size,
        blocks: inode.size.div_ceil(512),
        atime: inode.atime.into(),
        mtime: inode.mtime.into(),
        ctime: inode.ctime.into(),
        crtime: inode.crtime.into(),
        kind: file_type(inode.kind),
        perm: inode.perm,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        // Tools size their I/O buffers by st_blksize: large requests mean few FUSE round trips.
        blksize: PREFERRED_IO_SIZE,
        flags: 0,
    }
}
